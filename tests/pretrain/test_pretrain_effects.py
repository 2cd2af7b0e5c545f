"""Every pretraining field that carries a paper value takes effect (issue 16 §1, §6).

Each test checks what the value *does* (shapes the encoder sees, gradients, what the loss reads),
not the stored number, so that a wiring bug (full mode run as compose, ``num_global_layers``
ignored beyond 1, the decoder's position embedding dropped, λ ignored or hard-coded, the
projector's width not ``homo_con_dim``, ...) fails here. The stored values themselves are
asserted against the paper in ``test_recipes_pretrain.py``.
"""
from __future__ import annotations

import json

import pytest
import torch

import mixedae.model.mixed_autoencoder as mae_module
from mixedae.model.homologous_contrastive import homologous_contrastive_loss
from mixedae.model.mixed_autoencoder import MixedAutoencoder
from mixedae.pretrain.config import PretrainConfig, get_preset

MICRO = dict(model="micro", img_size=64, patch_size=8, mask_patch_size=16, batch_size=8,
             decoder_dim=32, decoder_depth=1, decoder_heads=2, homo_con_dim=16)


def _model(preset="mixedae_tiny", **kw):
    torch.manual_seed(0)
    return MixedAutoencoder(get_preset(preset, **{**MICRO, **kw}).model_config())


def _block_calls(model):
    """Record (input, kwargs, output) of every encoder block call."""
    calls = []
    for i, blk in enumerate(model.encoder.blocks):
        blk.register_forward_hook(
            lambda m, a, k, o, i=i: calls.append((i, a[0], dict(k), o)), with_kwargs=True)
    return calls


# ---- segment embeddings: the paper's reading, and old configs keep what they ran ------------------
def test_paper_presets_and_demo_use_the_segment_embedding_of_app_b():
    from mixedae.pretrain.demo import demo_config, get_args_parser
    for name in ("mixedae_base", "mixedae_large", "mixedae_base_full", "mixedae_base_full_light",
                 "mixedae_large_full", "mixedae_tiny"):
        assert get_preset(name).seg_embed_mode == "residual", name
    assert demo_config(get_args_parser().parse_args([])).seg_embed_mode == "residual"
    assert PretrainConfig().seg_embed_mode == "residual"


def test_configs_written_before_keep_the_segment_embedding_they_ran():
    stored = json.loads(get_preset("mixedae_tiny").to_json())
    for mode in ("none", "residual", "attention"):  # every version wrote the field
        assert PretrainConfig.from_dict({**stored, "seg_embed_mode": mode}).seg_embed_mode == mode
    legacy = {k: v for k, v in stored.items() if k not in ("seg_embed_mode", "homo_cls")}
    assert PretrainConfig.from_dict({**legacy, "seg_embed": False}).seg_embed_mode == "none"
    assert PretrainConfig.from_dict({**legacy, "seg_embed": True}).seg_embed_mode == "residual"


def test_mae_homocon_adds_each_images_segment_code_to_every_block():
    """Tab. 7c row 2 (MAE + HomoCon) has segment embeddings: image b of a group gets the code of
    its place b mod g, added to the input of every block as for mixed samples."""
    model = _model("mae_homocon_base")
    assert model.seg_embed is not None
    calls = _block_calls(model)
    emb = []
    orig = model.encoder.embed
    model.encoder.embed = lambda x: (emb.append(orig(x)[0]) or (emb[0], None))
    seen = {}
    orig_enc = model.encode_masked
    model.encode_masked = lambda x: seen.setdefault("out", orig_enc(x))
    model(torch.randn(8, 3, 64, 64))
    ids_keep = seen["out"][1]
    x0 = emb[0]
    vis = x0[:, 1:].gather(1, ids_keep[..., None].expand(-1, -1, x0.shape[-1]))
    tokens = torch.cat([x0[:, :1], vis], 1)
    code = model.seg_embed.table[torch.arange(8) % model.group_size]       # (B, D)
    want = tokens.clone()
    want[:, 1:] += code[:, None]
    torch.testing.assert_close(calls[0][1], want)
    torch.testing.assert_close(calls[1][1], calls[0][3] + (want - tokens))


# ---- §6: the six wiring bugs ---------------------------------------------------------------------
@pytest.mark.parametrize("mixing, per_group", [("compose", 1), ("full", 4)])
def test_full_mode_encodes_one_over_r_mixed_samples_per_group(mixing, per_group):
    """Sec. 3.2: compose → one mixed sample per group (encoder batch B·r); full → 1/r samples
    with independently drawn masks (encoder batch B), each decoded for every source."""
    model = _model(mixing=mixing)
    calls = _block_calls(model)
    seen = {}
    orig = model.encode_mixed
    model.encode_mixed = lambda x: seen.setdefault("out", orig(x))
    dec_in = []
    model.decoder.register_forward_hook(lambda m, a, o: dec_in.append(a[1].shape[0]))
    model(torch.randn(8, 3, 64, 64))
    src = seen["out"][1]
    assert calls[0][1].shape[0] == 2 * per_group                 # 8 images, groups of 4
    assert src.shape[:2] == (2, per_group)
    assert dec_in == [2 * per_group * 4]
    if per_group > 1:  # independent masks, not one mask repeated
        assert not torch.equal(src[:, 0], src[:, 1])


def test_num_global_layers_is_the_number_of_leading_global_layers():
    """Tab. 3e: layers < num_global_layers attend globally, the rest by TopK (K < L here)."""
    for n in (1, 2, 3):
        model = _model(num_global_layers=n)
        calls = _block_calls(model)
        out = model(torch.randn(8, 3, 64, 64))
        assert out["topk_acc"].numel() == model.encoder.depth - n
        assert [c[0] for c in calls] == list(range(model.encoder.depth))
        for i, x, kw, o in list(calls):  # (the re-runs below append to ``calls``)
            glob = model.encoder.blocks[i](x, attn_mask=kw.get("attn_mask"), homo=None,
                                            qk_embed=kw.get("qk_embed"))
            same = torch.allclose(glob, o, atol=1e-5)
            assert same == (i < n), f"num_global_layers={n}: layer {i} global={same}"


def test_decoder_adds_its_position_embedding():
    """Identical tokens at every position are told apart only by the decoder's (fixed 2-D
    sine-cosine, MAE) position embedding."""
    from mixedae.model.pos_embed import sincos_2d
    model = _model()
    dec = model.decoder
    torch.testing.assert_close(dec.pos_embed[0], sincos_2d(dec.pos_embed.shape[-1], 8, 8, 1))
    cls = torch.zeros(1, 1, dec.pos_embed.shape[-1])
    pred = dec(cls, dec.mask_token.expand(1, 64, -1))[0]          # (L, p²·3)
    gap = (pred[:, None] - pred[None]).abs().amax(-1) + torch.eye(64)   # exact, not cdist's mm
    assert gap.min() > 1e-4


@pytest.mark.parametrize("lam", [0.05, 0.37])
def test_homo_con_weight_lambda_scales_the_contrastive_gradient(lam):
    """Eq. 8: L = L_recon + λ L_HomoCon. The projector is trained by L_HomoCon only, so its
    gradient is proportional to λ; the returned loss is the weighted sum."""
    grads, outs = [], []
    for w in (lam, 2 * lam):
        model = _model(homo_con_weight=w)
        torch.manual_seed(1)
        out = model(torch.randn(8, 3, 64, 64))
        out["loss"].backward()
        grads.append(model.projector.weight.grad.clone())
        outs.append(out)
    torch.testing.assert_close(grads[1], 2 * grads[0])
    for w, out in zip((lam, 2 * lam), outs):
        torch.testing.assert_close(out["loss"], out["loss_recon"] + w * out["loss_homocon"])
    assert outs[0]["loss_homocon"] > 0


def test_projector_width_and_tau_reach_the_contrastive_loss(monkeypatch):
    """Eq. 7 sees features projected to homo_con_dim (128 in the paper) at temperature τ."""
    seen = []

    def spy(feats, src, tau):
        seen.append((feats, src, tau))
        return homologous_contrastive_loss(feats, src, tau)
    monkeypatch.setattr(mae_module, "homologous_contrastive_loss", spy)
    for dim, tau in ((24, 0.25), (40, 0.6)):
        model = _model(homo_con_dim=dim, homo_con_tau=tau)
        out = model(torch.randn(8, 3, 64, 64))
        feats, src, t = seen[-1]
        assert feats.shape[-1] == dim and t == tau
        torch.testing.assert_close(out["loss_homocon"], homologous_contrastive_loss(feats, src, tau))
    # τ changes the loss value itself
    a = homologous_contrastive_loss(seen[-1][0], seen[-1][1], 0.25)
    assert not torch.allclose(a, out["loss_homocon"])


# ---- the other paper values, by their effect -----------------------------------------------------
def test_mix_ratio_and_mask_patch_size_shape_the_mixing():
    """Eq. 1-2: 1/r images per group, each contributing rL patches, at mask-patch granularity
    (32 px in the paper; 16 px here over 8 px patches → 2×2-patch blocks)."""
    for r, g in ((0.25, 4), (0.5, 2)):
        model = _model(mix_ratio=r)
        seen = {}
        orig = model.encode_mixed
        model.encode_mixed = lambda x: seen.setdefault("out", orig(x))
        model(torch.randn(8, 3, 64, 64))
        src = seen["out"][1]                                        # (G, M, L)
        assert src.shape[0] == 8 // g and int(src.max()) == g - 1
        counts = torch.stack([(src == i).sum(-1) for i in range(g)], -1)
        assert (counts == round(r * 64)).all()
        grid = src.view(*src.shape[:2], 8, 8)
        blocks = grid.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)   # 2×2 patches per block
        assert (blocks == blocks[..., :1]).all()


def test_topk_k_defaults_to_r_times_l_and_reaches_the_attention(monkeypatch):
    """K = rL (Tab. 3d); ``topk_ratio`` overrides it."""
    ks = []
    orig = mae_module.HomologousContext
    monkeypatch.setattr(mae_module, "HomologousContext",
                        lambda **kw: ks.append(kw["k"]) or orig(**kw))
    _model()(torch.randn(8, 3, 64, 64))
    _model(topk_ratio=0.5)(torch.randn(8, 3, 64, 64))
    assert ks == [16, 32]


def test_decoder_size_comes_from_the_config():
    """8 × 512 (Tab. 4 / MAE) and the light 2 × 256 of MixedAE-Full*: depth and width built."""
    for depth, dim, heads in ((2, 32, 2), (3, 48, 4)):
        dec = _model(decoder_depth=depth, decoder_dim=dim, decoder_heads=heads).decoder
        assert len(dec.blocks) == depth and dec.embed.out_features == dim
        assert dec.blocks[0].attn.num_heads == heads


def test_norm_pix_loss_switches_the_target():
    """Tab. 4 / MAE: normalized pixels; False reconstructs raw (normalised-image) patches."""
    from mixedae.model.mixed_autoencoder import patchify
    x = torch.randn(4, 3, 64, 64) * 2 + 1
    raw = _model(norm_pix_loss=False).targets(x)
    torch.testing.assert_close(raw, patchify(x, 8))
    norm = _model(norm_pix_loss=True).targets(x)
    torch.testing.assert_close(norm.mean(-1), torch.zeros(4, 64), atol=1e-5, rtol=0)


def test_optimizer_reads_lr_weight_decay_and_betas():
    """Tab. 4: lr = blr · batch / 256, AdamW weight decay and betas, all from the config."""
    from mixedae.pretrain.engine import build_optimizer
    cfg = get_preset("mixedae_tiny", **{**MICRO, "batch_size": 64}, blr=2e-4, weight_decay=0.07,
                     betas=(0.8, 0.9))
    opt = build_optimizer(MixedAutoencoder(cfg.model_config()), cfg)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.07}
    assert all(g["betas"] == (0.8, 0.9) for g in opt.param_groups)
    assert all(g["lr"] == pytest.approx(2e-4 * 64 / 256) for g in opt.param_groups)


def test_engine_schedule_follows_epochs_warmup_and_min_lr(tmp_path):
    """Per-step warmup-cosine (Tab. 4): epochs × steps/epoch steps, warmup_epochs of linear
    warm-up to the lr, cosine to min_lr; the logged lr of every step is the one applied."""
    from PIL import Image

    from mixedae.pretrain.data import PretrainImages, pretrain_transform
    from mixedae.pretrain.engine import RunOptions, pretrain
    from mixedae.runtime.schedules import cosine_lr
    imgs = [Image.new("RGB", (48, 48), c) for c in ("red", "green", "blue", "white")] * 4
    cfg = get_preset("mixedae_tiny", **MICRO, epochs=3, warmup_epochs=1, lr=1e-3, min_lr=1e-4)
    res = pretrain(cfg, PretrainImages(imgs, pretrain_transform(cfg.img_size)),
                   RunOptions(output_dir=str(tmp_path), num_workers=0, progress=False,
                              device="cpu", amp="none", resume=None, log_every=1))
    assert res.step == 6                                        # 16 images / 8 = 2 steps/epoch
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([cosine_lr(s, 1e-3, 6, 2, 1e-4) for s in range(6)])
    assert lrs[1] == pytest.approx(0.5e-3) and lrs[2] == pytest.approx(1e-3)


def test_crop_scale_reaches_the_random_resized_crop(tmp_path):
    """Tab. 4: RandomResizedCrop with MAE's scale (0.2, 1) by default, from the config."""
    from torchvision.transforms import v2

    from mixedae.pretrain.data import build_pretrain_dataset
    from test_train import synthetic_folder
    data = synthetic_folder(tmp_path / "d", n=4)
    for scale in ((0.2, 1.0), (0.35, 0.9)):
        ds = build_pretrain_dataset(data, 32, scale)
        crops = [t for t in ds.transform.crop.transforms if isinstance(t, v2.RandomResizedCrop)]
        assert len(crops) == 1 and tuple(crops[0].scale) == scale
