"""Model-level tests: mixing (Eq. 1-3), homologous attention (Eq. 6), contrastive loss (Eq. 7),
segment embeddings, gradient flow, every baseline."""
import math

import pytest
import torch
import torch.nn.functional as F

from mixedae.pretrain.config import PRESETS, get_preset
from mixedae.model.attention.homologous import (HomologousContext, homologous_attention,
                                                homologous_attention_reference, topk_accuracy,
                                                topk_attn_bias)
from mixedae.model.homologous_contrastive import homologous_contrastive_loss
from mixedae.model.mixed_autoencoder import MixedAutoencoder, patchify, unpatchify
from mixedae.model.mixing import mix_images, mixing_masks, source_onehot, unmix_tokens

MICRO = dict(model="micro", img_size=64, patch_size=8, mask_patch_size=16, batch_size=8,
             decoder_dim=32, decoder_depth=1, decoder_heads=2)


def build(preset: str, **overrides) -> MixedAutoencoder:
    """The model of a preset, as pretraining builds it."""
    return MixedAutoencoder(get_preset(preset, **overrides).model_config())


# ---- mixing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("img,patch,block,g,exact", [
    (224, 16, 16, 4, True),    # 16 px blocks: exactly rL = 49 patches per source
    (224, 16, 32, 4, False),   # 32 px blocks (paper default): 13/12/12/12 blocks
    (224, 16, 32, 2, False),
    (64, 8, 16, 2, True),
])
def test_mixing_mask_counts(img, patch, block, g, exact):
    torch.manual_seed(0)
    grid = (img // patch, img // patch)
    src = mixing_masks(16, 3, g, grid, block // patch)
    L = grid[0] * grid[1]
    counts = source_onehot(src, g).sum(-1)  # (G, M, g)
    assert counts.sum(-1).eq(L).all()
    if exact:
        assert counts.eq(L // g).all()
    else:
        per_block = (block // patch) ** 2
        blocks = counts // per_block
        assert (counts % per_block == 0).all()
        assert (blocks.max(-1).values - blocks.min(-1).values).le(1).all()
    # constant on every mask block
    s = src.view(16, 3, grid[0] // (block // patch), block // patch, grid[1] // (block // patch),
                 block // patch)
    assert (s == s[:, :, :, :1, :, :1]).all()
    # masks differ across groups and mixed samples (random, independent)
    assert not (src[0, 0] == src[1, 0]).all() and not (src[0, 0] == src[0, 1]).all()


@pytest.mark.parametrize("g,extra", [(4, 1), (5, 4)])
def test_mixing_extra_blocks_go_to_a_random_source(g, extra):
    """224 px, 32 px blocks: 49 blocks over g sources; the n mod g extra blocks must not always go
    to the same batch positions (they went to source 0 with ``perm % g``)."""
    torch.manual_seed(0)
    G, M = 500, 4
    src = mixing_masks(G, M, g, (14, 14), 2)
    blocks = source_onehot(src, g).sum(-1) // 4                  # (G, M, g)
    assert (49 % g == extra) and blocks.sum(-1).eq(49).all()
    big = blocks == 49 // g + 1                                  # sources holding an extra block
    assert big.sum(-1).eq(extra).all()
    n, p = G * M, extra / g
    sd = (n * p * (1 - p)) ** 0.5
    per_source = big.sum((0, 1)).float()                         # expected n·p each
    assert (per_source - n * p).abs().max() < 5 * sd, per_source  # source 0 always: n vs n·p
    # hence every batch position j·g + i has the same expected number of hidden patches
    hidden = (~source_onehot(src, g)).sum(-1).float().mean((0, 1))
    assert (hidden.max() - hidden.min()) < 0.2 * 4, hidden


def test_mix_then_unmix_inverts():
    torch.manual_seed(1)
    B, g, p = 8, 4, 8
    imgs = torch.randn(B, 3, 32, 32)
    src = mixing_masks(B // g, 2, g, (4, 4), 1)
    mixed = mix_images(imgs, src, p)                     # (G·M, 3, 32, 32)
    mixed_p = patchify(mixed, p)                          # (G·M, L, P)
    own = patchify(imgs, p).view(B // g, 1, g, 16, -1)
    # Eq. (1): each position of a mixed sample is the patch of its source image
    expect = own.expand(-1, 2, -1, -1, -1).gather(2, src[:, :, None, :, None].expand(
        -1, -1, 1, -1, own.shape[-1])).squeeze(2).flatten(0, 1)
    assert torch.equal(mixed_p, expect)
    # Eq. (3): unmixing restores every image's own patches at their positions, [MASK] elsewhere
    mask_tok = torch.full((own.shape[-1],), 1e4)
    un = unmix_tokens(mixed_p, src, mask_tok, g).view(B // g, 2, g, 16, -1)
    onehot = source_onehot(src, g)
    assert torch.equal(un[onehot], own.expand(-1, 2, -1, -1, -1)[onehot])
    assert (un[~onehot] == 1e4).all()
    # per-source counts: every position belongs to exactly one source
    assert onehot.sum(2).eq(1).all()
    assert torch.equal(unpatchify(patchify(imgs, p), p, (4, 4)), imgs)


# ---- homologous attention -------------------------------------------------------------------------
def _qkv(B=2, H=3, N=17, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(3)]


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
@pytest.mark.parametrize("K", [1, 4, 9])
def test_topk_attention_matches_reference_values_and_grads(K, impl):
    q, k, v = _qkv()
    out = homologous_attention(q, k, v, HomologousContext(k=K, impl=impl))
    ref = homologous_attention_reference(q, k, v, K)
    torch.testing.assert_close(out, ref)
    gout = torch.randn_like(out)
    g1 = torch.autograd.grad(out, (q, k, v), gout)
    g2 = torch.autograd.grad(ref, (q, k, v), gout)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_topk_attention_keeps_exactly_k_and_cls_global():
    q, k, _ = _qkv(N=21)
    bias, idx = topk_attn_bias(q, k, 5)
    mask = bias == 0
    assert mask[:, :, 1:, 1:].sum(-1).eq(5).all()       # patches keep exactly K patch keys
    assert mask[:, :, 0].all() and mask[:, :, :, 0].all()  # cls: global query, always a key
    logits = q[:, :, 1:] @ k[:, :, 1:].transpose(-1, -2)
    kth = logits.topk(5, -1).values[..., -1:]
    assert torch.equal(mask[:, :, 1:, 1:], logits >= kth)


def test_selection_ranks_on_fp32_logits_under_bf16():
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 4, 197, 64, generator=g).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bias, idx = topk_attn_bias(q, k, 49)
    exact = q[:, :, 1:].float() @ k[:, :, 1:].float().transpose(-1, -2)
    kth = exact.topk(49, -1).values[..., -1:]
    assert torch.equal(bias[:, :, 1:, 1:] == 0, exact >= kth)  # fp32 ranking: no ties
    low = (q[:, :, 1:] @ k[:, :, 1:].transpose(-1, -2))
    assert ((low >= low.topk(49, -1).values[..., -1:]).sum(-1) > 49).any()  # bf16 would tie


def test_topk_equals_full_softmax_when_k_is_l():
    q, k, v = _qkv(N=13)
    out = homologous_attention(q, k, v, HomologousContext(k=12))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_topk_accuracy_counts_homologous_keys():
    src = torch.tensor([[0, 0, 1, 1]])
    idx = torch.tensor([[[[0, 1], [1, 2], [2, 3], [0, 3]]]])  # (1,1,4,2)
    # query0: 0,1 → 2 hits; q1: 1(hit),2 → 1; q2: 2,3 → 2; q3: 0,3(hit) → 1  → 6/8
    assert topk_accuracy(idx, src).item() == pytest.approx(6 / 8)


def test_model_topk_with_k_equal_l_matches_global_attention():
    torch.manual_seed(0)
    m_topk = build("mixedae_tiny", **MICRO, topk_ratio=1.0)
    m_glob = build("mixedae_tiny", **MICRO, attention="global")
    m_glob.load_state_dict(m_topk.state_dict())
    x = torch.randn(8, 3, 64, 64)
    torch.manual_seed(5); a = m_topk(x)
    torch.manual_seed(5); b = m_glob(x)
    torch.testing.assert_close(a["loss"], b["loss"])
    assert a["topk_acc"].shape == (3,) and b["topk_acc"].numel() == 0


# ---- contrastive loss -----------------------------------------------------------------------------
def _contrastive_loop(feats, src, tau):
    z = F.normalize(feats.double(), dim=-1)
    losses = []
    for n in range(z.shape[0]):
        L = z.shape[1]
        for l in range(L):
            pos = [j for j in range(L) if j != l and src[n, j] == src[n, l]]
            if not pos:
                continue
            denom = sum(math.exp(float(z[n, l] @ z[n, j]) / tau) for j in range(L) if j != l)
            losses.append(sum(-math.log(math.exp(float(z[n, l] @ z[n, j]) / tau) / denom)
                              for j in pos) / len(pos))
    return sum(losses) / len(losses)


def test_contrastive_loss_equals_slow_loop():
    torch.manual_seed(0)
    feats = torch.randn(3, 12, 16)
    src = torch.randint(0, 3, (3, 12))
    src[0, 0] = 7  # an anchor without positives is left out
    got = homologous_contrastive_loss(feats, src, tau=0.25).item()
    assert got == pytest.approx(_contrastive_loop(feats, src, 0.25), rel=1e-5)


def test_contrastive_loss_prefers_homologous_clusters():
    src = torch.tensor([[0] * 6 + [1] * 6])
    aligned = F.one_hot(src, 4).float() + 0.01 * torch.randn(1, 12, 4)
    assert homologous_contrastive_loss(aligned, src) < homologous_contrastive_loss(
        torch.randn(1, 12, 4), src)


# ---- segment embedding ----------------------------------------------------------------------------
def test_segment_embedding_reaches_every_layer():
    torch.manual_seed(0)
    model = build("mixedae_tiny", **MICRO, seg_embed_mode="residual")
    seen, ins, outs = {}, [], []
    model.seg_embed.register_forward_hook(lambda m, a, o: seen.setdefault("seg", o))
    for blk in model.encoder.blocks:
        blk.register_forward_pre_hook(lambda m, a: ins.append(a[0]))
        blk.register_forward_hook(lambda m, a, o: outs.append(o))
    emb = []
    orig_embed = model.encoder.embed
    model.encoder.embed = lambda x: (emb.append(orig_embed(x)[0]) or (emb[0], None))
    model(torch.randn(8, 3, 64, 64))
    seg = seen["seg"]
    assert seg.abs().sum() > 0 and seg[:, 0].abs().sum() == 0  # cls gets none
    prev = [emb[0]] + outs[:-1]
    assert len(ins) == model.encoder.depth
    for i, (x_in, x_prev) in enumerate(zip(ins, prev)):
        torch.testing.assert_close(x_in, x_prev + seg, msg=f"layer {i} input lacks the segment "
                                   "embedding")
    # same source → same embedding, different sources → different embeddings
    tab = model.seg_embed.table
    assert torch.cdist(tab, tab).add(torch.eye(len(tab))).min() > 0.1


# ---- gradient flow and every baseline -------------------------------------------------------------
BASELINES = ["mixedae_base", "mixedae_base_full", "mae_base", "naive_mix_base",
             "mix_masked_sa_base", "homo_att_only_base", "homo_con_only_base",
             "mixedae_no_seg_base", "mixedae_seg_residual_base", "mae_homocon_base"]


@pytest.mark.parametrize("preset", BASELINES)
def test_every_baseline_builds_trains_and_grads_reach_all_params(preset):
    torch.manual_seed(0)
    cfg = get_preset(preset, **{**MICRO})
    model = MixedAutoencoder(cfg.model_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3, 64, 64)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = model(x)
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not no_grad, f"{preset}: no gradient for {no_grad}"
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        out["loss"].backward()
        opt.step()
    assert torch.isfinite(out["loss"])
    assert (out["loss_homocon"] > 0) == cfg.homo_con
    assert out["topk_acc"].numel() == (cfg.model == "micro" and cfg.attention == "topk") * 3


def test_presets_are_valid_and_paper_defaults():
    for name in PRESETS:
        get_preset(name)
    c = get_preset("mixedae_base")
    assert (c.mix_ratio, c.topk, c.num_global_layers, c.homo_con_tau, c.homo_con_weight,
            c.homo_con_dim, c.mask_patch_size, c.decoder_depth, c.decoder_dim) == \
        (0.25, 49, 1, 0.25, 0.1, 128, 32, 8, 512)
    assert c.effective_lr() == pytest.approx(7.5e-5 * 4096 / 256)
    assert get_preset("mae_base").effective_lr() == pytest.approx(1.5e-4 * 4096 / 256)
    assert (c.epochs, get_preset("mixedae_large").epochs) == (300, 1600)  # Appendix C: ViT-L 1600
    assert get_preset("mixedae_large").batch_size == 2048 and get_preset("mae_large").epochs == 1600
    # App. B: segment embeddings added to the input of every block (issue 16)
    assert (c.seg_embed_mode, c.homo_cls) == ("residual", "always_visible")
    assert get_preset("mixedae_seg_residual_base").seg_embed_mode == "residual"


def test_recon_loss_ignores_visible_patches():
    torch.manual_seed(0)
    m = build("mixedae_tiny", **MICRO)
    pred, target = torch.randn(2, 1, 4, 64, 192), torch.randn(2, 1, 4, 64, 192)
    hidden = torch.rand(2, 1, 4, 64) > 0.5
    base = m._recon_loss(pred, target, hidden)
    pred2 = pred.clone()
    pred2[~hidden] += 100.0
    torch.testing.assert_close(m._recon_loss(pred2, target, hidden), base)
    expect = ((pred - target) ** 2).mean(-1)[hidden].mean()
    torch.testing.assert_close(base, expect)


# ---- the two loss terms, as forward() builds them ----------------------------------------------
def _capture(model, name):
    """Wrap ``model.<name>`` to keep its return value."""
    seen, orig = {}, getattr(model, name)
    setattr(model, name, lambda *a, **k: seen.setdefault("out", orig(*a, **k)))
    return seen


@pytest.mark.parametrize("preset", ["mixedae_base", "mixedae_base_full", "mae_base"])
def test_forward_recon_loss_is_on_the_hidden_patches_forward_builds(preset):
    """The decoder is made to predict 0 on every patch a sequence does not see and 10 on those it
    sees; the loss of forward() must be the error on the former (Eq. 4), from the masks that
    forward() itself drew."""
    torch.manual_seed(0)
    model = build(preset, **MICRO)
    g, mae = model.group_size, model.cfg.mixing == "none"
    enc = _capture(model, "encode_masked" if mae else "encode_mixed")
    x = torch.randn(8, 3, 64, 64)
    B, L = 8, 64

    def visible_and_image():  # per decoder sequence: visible patches and its source image
        if mae:
            return torch.zeros(B, L, dtype=torch.bool).scatter(1, enc["out"][1], True), \
                torch.arange(B)
        src = enc["out"][1]                                      # (G, M, L)
        G, M, _ = src.shape
        vis = src[:, :, None, :] == torch.arange(g).view(1, 1, g, 1)   # sequence (j, m, i)
        image = torch.arange(G).view(G, 1, 1) * g + torch.arange(g).view(1, 1, g)
        return vis.reshape(-1, L), image.expand(G, M, g).reshape(-1)

    model.decoder.register_forward_hook(
        lambda m, a, o: 0 * o + 10.0 * visible_and_image()[0][..., None].to(o.dtype))
    out = model(x)
    visible, image = visible_and_image()
    err = model.targets(x)[image].pow(2).mean(-1)                # (0 - target)² per patch
    assert visible.float().mean() < 0.5
    torch.testing.assert_close(out["loss_recon"], err[~visible].mean())


def test_norm_pix_targets_are_per_patch_standardised_and_finite_on_flat_patches():
    torch.manual_seed(0)
    model = build("mixedae_tiny", **MICRO)
    x = torch.randn(4, 3, 64, 64) * 3 + 1
    t = model.targets(x)                                         # (B, L, p·p·3)
    assert t.shape == (4, 64, 8 * 8 * 3)
    torch.testing.assert_close(t.mean(-1), torch.zeros(4, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(4, 64), atol=1e-4, rtol=0)
    # a flat patch (zero variance) has a zero target, not 0/0 = NaN
    x[0] = 0.5
    t = model.targets(x)
    assert torch.isfinite(t).all() and t[0].abs().max() == 0
    torch.manual_seed(1)
    assert torch.isfinite(model(torch.cat([x, x])[:8])["loss"])
    assert not build("mixedae_tiny", **MICRO, norm_pix_loss=False).targets(
        x).equal(t)


def test_model_takes_model_arguments_not_the_training_config():
    """The paper's model is built from a ModelConfig; training fields (batch size, decode, lr)
    are the pretraining config's, checked by it when it builds the ModelConfig."""
    from mixedae.model.mixed_autoencoder import ModelConfig
    from mixedae.pretrain.config import PretrainConfig
    from mixedae.runtime.errors import ConfigError
    mc = ModelConfig(model="micro", img_size=32, patch_size=8, mask_patch_size=16,
                     decoder_dim=32, decoder_depth=1, decoder_heads=2)
    torch.manual_seed(0)
    out = MixedAutoencoder(mc)(torch.randn(4, 3, 32, 32))
    assert torch.isfinite(out["loss"]) and out["topk_acc"].numel() == 3   # 4 blocks, 1 global
    assert mc.topk == 4 and mc.group_size == 4                      # K = rL = 0.25 · 16
    cfg = PretrainConfig(**{**MICRO, "img_size": 32, "mask_patch_size": 16})
    assert cfg.model_config() == mc and cfg.topk == mc.topk
    with pytest.raises(ConfigError, match="batch_size=6 is not divisible"):
        cfg.replace(batch_size=6).model_config()


def test_vit_load_state_dict_resamples_another_grids_pos_embed():
    """A 14x14 checkpoint's position embedding loads into a 16x16 ViT through plain
    load_state_dict (the ViT's pre-hook) and equals timm's bicubic resample; the caller's dict
    is untouched and a non-square embedding is still refused by load_state_dict."""
    from timm.layers import resample_abs_pos_embed
    from mixedae.model.vit import create_vit
    src = create_vit("micro", img_size=112, patch_size=8, learnable_pos_embed=True)  # 14x14
    dst = create_vit("micro", img_size=128, patch_size=8, learnable_pos_embed=True)  # 16x16
    with torch.no_grad():
        src.pos_embed.add_(torch.randn_like(src.pos_embed))
    sd = src.state_dict()
    assert dst.load_state_dict(sd, strict=True).missing_keys == []
    want = resample_abs_pos_embed(sd["pos_embed"], new_size=[16, 16], old_size=[14, 14],
                                  num_prefix_tokens=1, interpolation="bicubic",
                                  antialias=False)
    assert torch.equal(dst.pos_embed.data, want) and sd["pos_embed"].shape == (1, 197, 64)
    torch.testing.assert_close(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # cls row kept
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    with pytest.raises(RuntimeError, match="size mismatch for pos_embed"):
        dst.load_state_dict({**sd, "pos_embed": torch.zeros(1, 1 + 15, 64)})
