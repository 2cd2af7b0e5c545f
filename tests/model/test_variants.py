"""The readings of the paper that are config fields: how the segment embedding enters the encoder
(``seg_embed_mode``) and how homologous attention treats the cls token (``homo_cls``)."""
import json

import pytest
import torch

from mixedae.model.attention.homologous import (HomologousContext, homologous_attention,
                                                homologous_attention_reference, topk_accuracy,
                                                topk_attn_bias)
from mixedae.model.mixed_autoencoder import MixedAutoencoder
from mixedae.model.vit import Attention
from mixedae.pretrain.config import PretrainConfig, get_preset
from mixedae.runtime.errors import ConfigError


from test_model import MICRO, build

# ---- cls handling in homologous attention ----------------------------------------------------
def _loop_reference(q, k, v, K, cls_mode, p=1):
    """Row by row: the candidate keys, the K best by a full sort, softmax over kept keys."""
    B, H, N, _ = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for n in range(N):
                logits = [float(q[b, h, n] @ k[b, h, j]) / q.shape[-1] ** 0.5 for j in range(N)]
                if cls_mode == "always_visible" and n < p:
                    keep = list(range(N))                       # cls query: global
                elif cls_mode == "always_visible":
                    patches = sorted(range(p, N), key=lambda j: -logits[j])[:K]
                    keep = list(range(p)) + patches             # + cls keys always
                else:
                    keep = sorted(range(N), key=lambda j: -logits[j])[:K]
                w = torch.tensor([logits[j] for j in keep], dtype=q.dtype).softmax(0)
                out[b, h, n] = sum(wi * v[b, h, j] for wi, j in zip(w, keep))
    return out


def _qkv(B=2, H=2, N=13, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(3)]


@pytest.mark.parametrize("cls_mode", ["always_visible", "topk"])
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
@pytest.mark.parametrize("K", [1, 5])
def test_cls_modes_match_a_loop_reference(K, impl, cls_mode):
    q, k, v = _qkv()
    loop = _loop_reference(q.detach(), k.detach(), v.detach(), K, cls_mode)
    ref = homologous_attention_reference(q, k, v, K, cls_mode=cls_mode)
    out = homologous_attention(q, k, v, HomologousContext(k=K, impl=impl, cls_mode=cls_mode))
    torch.testing.assert_close(ref.detach(), loop)
    torch.testing.assert_close(out, ref)
    gout = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), gout),
                    torch.autograd.grad(ref, (q, k, v), gout)):
        torch.testing.assert_close(a, b)


def test_literal_topk_cls_mode_keeps_k_keys_in_every_row_cls_included():
    q, k, _ = _qkv(N=21)
    bias, idx = topk_attn_bias(q, k, 5, cls_mode="topk")
    keep = bias == 0
    assert keep.sum(-1).eq(5).all()                     # cls row too: no global query
    assert not keep[:, :, :, 0].all()                   # the cls key competes, not always kept
    logits = q @ k.transpose(-1, -2)
    assert torch.equal(keep, logits >= logits.topk(5, -1).values[..., -1:])
    # patch rows' indices in patch coordinates; a selected cls key is -1
    assert idx.shape == (2, 2, 20, 5)
    assert keep[:, :, 1:].gather(-1, idx + 1).all()                  # every kept key, once
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all() and (idx == -1).any()
    with pytest.raises(ValueError, match="cls_mode"):
        HomologousContext(k=3, cls_mode="global")


def test_topk_accuracy_counts_a_selected_cls_key_as_a_miss():
    src = torch.tensor([[0, 0, 1, 1]])
    idx = torch.tensor([[[[0, -1], [1, 2], [2, -1], [3, 2]]]])
    # q0: 0 hit, cls miss; q1: 1 hit, 2 miss; q2: 2 hit, cls miss; q3: 3, 2 hits → 5/8
    assert topk_accuracy(idx, src).item() == pytest.approx(5 / 8)


# ---- segment embedding modes -----------------------------------------------------------------
def _trace_blocks(model):
    """Record the residual input of every encoder block and its attention's qk_embed."""
    ins, qk = [], []
    for blk in model.encoder.blocks:
        blk.register_forward_pre_hook(lambda m, a, kw: ins.append(a[0]), with_kwargs=True)
        blk.attn.register_forward_pre_hook(lambda m, a, kw: qk.append(kw.get("qk_embed")),
                                           with_kwargs=True)
    outs = []
    for blk in model.encoder.blocks:
        blk.register_forward_hook(lambda m, a, o: outs.append(o))
    emb, seg = [], {}
    orig = model.encoder.embed
    model.encoder.embed = lambda x: (lambda r: emb.append(r[0]) or r)(orig(x))
    if model.seg_embed is not None:
        model.seg_embed.register_forward_hook(lambda m, a, o: seg.setdefault("seg", o))
    return emb, ins, outs, qk, seg


@pytest.mark.parametrize("mode", ["residual", "attention", "input", "none"])
def test_segment_embedding_mode_meanings(mode):
    torch.manual_seed(0)
    model = build("mixedae_tiny", **MICRO, seg_embed_mode=mode)
    emb, ins, outs, qk, seg = _trace_blocks(model)
    model(torch.randn(8, 3, 64, 64))
    seg = seg.get("seg")
    assert (seg is None) == (mode == "none") and len(ins) == model.encoder.depth
    if seg is not None:
        assert seg[:, 0].abs().sum() == 0 and seg[:, 1:].abs().sum(-1).gt(0).all()
    prev = [emb[0]] + outs[:-1]  # the residual stream without any segment code
    for i, (x_in, x_prev, e) in enumerate(zip(ins, prev, qk)):
        added = {"residual": seg, "input": seg if i == 0 else None}.get(mode)
        torch.testing.assert_close(x_in, x_prev if added is None else x_prev + added)
        if mode == "attention":
            assert e is not None and torch.equal(e, seg)   # every layer's q/k input
        else:
            assert e is None


def test_attention_mode_enters_queries_and_keys_only():
    torch.manual_seed(0)
    attn = Attention(16, 2).double()
    x, e = torch.randn(3, 7, 16).double(), torch.randn(3, 7, 16).double()
    W, b = attn.qkv.weight, attn.qkv.bias
    q = (x + e) @ W[:16].T + b[:16]
    k = (x + e) @ W[16:32].T + b[16:32]
    v = x @ W[32:].T + b[32:]
    split = lambda t: t.view(3, 7, 2, 8).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    ref = attn.proj(ref.transpose(1, 2).reshape(3, 7, 16))
    torch.testing.assert_close(attn(x, qk_embed=e), ref)
    assert not torch.allclose(attn(x, qk_embed=e), attn(x))


def test_attention_mode_without_query_key_weights_is_the_model_without_segments():
    """With W_q = W_k = 0 the attention weights cannot depend on anything, so if the segment
    code reached the values or the residual stream the two models would still differ."""
    torch.manual_seed(0)
    kw = dict(**MICRO, attention="global")
    m_att = build("mixedae_tiny", **kw, seg_embed_mode="attention")
    m_none = build("mixedae_tiny", **kw, seg_embed_mode="none")
    m_res = build("mixedae_tiny", **kw, seg_embed_mode="residual")
    with torch.no_grad():
        for blk in m_att.encoder.blocks:
            blk.attn.qkv.weight[:2 * blk.attn.qkv.in_features] = 0
    m_none.load_state_dict(m_att.state_dict())
    m_res.load_state_dict(m_att.state_dict())
    x = torch.randn(8, 3, 64, 64)
    losses = []
    for m in (m_att, m_none, m_res):
        torch.manual_seed(5)
        losses.append(m(x)["loss"])
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(losses[2], losses[1])           # the residual code does change it


@pytest.mark.parametrize("cls_mode", ["always_visible", "topk"])
@pytest.mark.parametrize("mode", ["attention", "input"])
def test_variants_train_with_gradients_everywhere(mode, cls_mode):
    torch.manual_seed(0)
    cfg = get_preset("mixedae_tiny", **MICRO, seg_embed_mode=mode, homo_cls=cls_mode)
    model = MixedAutoencoder(cfg.model_config())
    out = model(torch.randn(8, 3, 64, 64))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["topk_acc"].shape == (3,)
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.parameters() if p.requires_grad)


# ---- config -----------------------------------------------------------------------------------
def test_variant_fields_are_validated_and_recorded():
    cfg = get_preset("mixedae_tiny", seg_embed_mode="attention", homo_cls="topk")
    rec = json.loads(cfg.to_json())
    assert rec["seg_embed_mode"] == "attention" and rec["homo_cls"] == "topk"
    assert "seg_embed" not in rec
    assert PretrainConfig.from_dict(rec) == cfg
    with pytest.raises(ConfigError, match="seg_embed_mode='qk'"):
        get_preset("mixedae_tiny", seg_embed_mode="qk")
    with pytest.raises(ConfigError, match="homo_cls='global'"):
        get_preset("mixedae_tiny", homo_cls="global")
    assert get_preset("mae_base").seg_embed_mode == "none"
    assert get_preset("mixedae_no_seg_base").seg_embed_mode == "none"


def test_configs_with_the_old_boolean_seg_embed_still_load():
    new = json.loads(get_preset("mixedae_tiny", seg_embed_mode="attention",
                                homo_cls="topk").to_json())
    old = {k: v for k, v in new.items() if k not in ("seg_embed_mode", "homo_cls")}
    for flag, mode in ((True, "residual"), (False, "none")):
        cfg = PretrainConfig.from_dict({**old, "seg_embed": flag})
        assert (cfg.seg_embed_mode, cfg.homo_cls) == (mode, "always_visible")  # what they ran
    assert get_preset("mixedae_tiny", seg_embed=False).seg_embed_mode == "none"
    with pytest.raises(ConfigError, match="contradicts"):
        PretrainConfig.from_dict({**old, "seg_embed": False, "seg_embed_mode": "residual"})
    with pytest.raises(ConfigError, match="seg_embed='yes'"):
        PretrainConfig.from_dict({**old, "seg_embed": "yes"})


def test_configs_with_the_removed_topk_select_knobs_still_load():
    """config.json files of 2026-12-07 and before hold ``topk_select`` / ``topk_select_fp32``
    (benchmark switches, now gone): the values every preset ran load silently as the same
    config; the others load with one note naming the key."""
    new = json.loads(get_preset("mixedae_tiny").to_json())
    assert "topk_select" not in new and "topk_select_fp32" not in new
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = PretrainConfig.from_dict({**new, "topk_select": "topk", "topk_select_fp32": True})
    assert old == PretrainConfig.from_dict(new)
    with pytest.warns(UserWarning, match="topk_select='sort' is no longer used") as notes:
        sort = PretrainConfig.from_dict({**new, "topk_select": "sort"})
    assert sort == old and len(notes) == 1
    with pytest.warns(UserWarning, match="topk_select_fp32=False is no longer used.*fp32"):
        PretrainConfig.from_dict({**new, "topk_select_fp32": False})
