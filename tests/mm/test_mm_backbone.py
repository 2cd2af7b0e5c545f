"""MixedAEViT: registries, output shapes, position-embedding resize, checked weight loading."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import mixedae.mm  # noqa: F401  (a failing import must fail the tests: the stack is required)
from mixedae import convert as cv
from mixedae.mm import MixedAEViT
from mixedae.model.pos_embed import resize_pos_embed
from mixedae.model.vit import create_vit
from mixedae.runtime.errors import CheckpointError
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS as SEG_MODELS

def scoped_build(registry, cfg):
    """Build under the registry's own default scope (as a Runner with that scope would)."""
    with DefaultScope.overwrite_default_scope(registry.scope):
        return registry.build(cfg)


MICRO = dict(type="MixedAEViT", arch="micro", out_indices=(0, 1, 2, 3),
             norm_cfg=dict(type="BN", requires_grad=True))


def pretrain_file(tmp_path, seed=0, rel_pos=False):
    torch.manual_seed(seed)
    enc = create_vit("micro", rel_pos_bias=rel_pos)
    for p in enc.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    sd = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    sd.update({"decoder.embed.weight": torch.randn(32, 64), "decoder.mask_token": torch.zeros(1, 1, 32),
               "projector.weight": torch.randn(16, 64), "projector.bias": torch.zeros(16)})
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path), metadata={"config": json.dumps({"model": "micro"})})
    return enc, path


@pytest.mark.parametrize("registry", [SEG_MODELS, DET_MODELS], ids=["mmseg", "mmdet"])
def test_builds_through_both_registries(registry):
    m = scoped_build(registry, dict(MICRO, img_size=224))
    assert isinstance(m, MixedAEViT)
    names = dict(m.named_parameters())
    assert "blocks.0.attn.qkv.weight" in names and "patch_embed.proj.weight" in names
    assert "fpn1.0.weight" in names and "fpn1.1.weight" in names   # adapter (BN) present
    # drop path: linear over depth
    m2 = scoped_build(registry, dict(MICRO, drop_path_rate=0.3))
    assert [round(getattr(b.drop_path, "drop_prob", 0.0), 6) for b in m2.blocks] == [0.0, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("hw", [(512, 512), (800, 1216)])
def test_output_shapes(hw):
    m = scoped_build(SEG_MODELS, dict(MICRO, img_size=224)).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, *hw))
    h, w = hw[0] // 16, hw[1] // 16
    assert [tuple(o.shape) for o in outs] == [(1, 64, 4 * h, 4 * w), (1, 64, 2 * h, 2 * w),
                                             (1, 64, h, w), (1, 64, h // 2, w // 2)]


def test_out_indices_and_no_adapter():
    m = MixedAEViT(arch="micro", out_indices=(1, 3), with_adapter=False).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = m(x)
        tok, grid = m.embed(x)
        _, ref = m.forward_blocks(tok, out_indices=(1, 3), grid=grid)
    assert [tuple(o.shape) for o in outs] == [(2, 64, 4, 6)] * 2
    assert torch.allclose(outs[1], ref[1][:, 1:].transpose(1, 2).reshape(2, 64, 4, 6))


def test_pos_embed_resize_matches_direct_bicubic():
    m = MixedAEViT(arch="micro", img_size=224)
    torch.nn.init.normal_(m.pos_embed)
    for grid in [(50, 76), (32, 32), (7, 9)]:
        got = m.pos_embed_for(grid)
        patch = m.pos_embed[:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
        ref = F.interpolate(patch, size=grid, mode="bicubic", align_corners=False)
        ref = torch.cat([m.pos_embed[:, :1], ref.permute(0, 2, 3, 1).reshape(1, -1, 64)], 1)
        assert torch.equal(got, ref)
    assert m.pos_embed_for((14, 14)) is m.pos_embed


def test_relative_position_bias_non_square_and_zero_init():
    a = MixedAEViT(arch="micro", img_size=224, use_rel_pos_bias=True).eval()
    b = MixedAEViT(arch="micro", img_size=224).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items()
                       if "relative_position" not in k})
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        oa, ob = a(x), b(x)
    for u, v in zip(oa, ob):   # zero-initialised tables: same function as without them
        assert torch.allclose(u, v, atol=1e-5)
    t = a.blocks[0].attn.relative_position_bias_table
    assert t.shape == ((2 * 14 - 1) ** 2 + 3, 2) and t.abs().sum() == 0
    with torch.no_grad():
        t.normal_()
        assert not torch.allclose(a(x)[2], ob[2], atol=1e-3)   # and the bias is used


def test_pretrain_checkpoint_loads_with_only_expected_missing(tmp_path):
    enc, path = pretrain_file(tmp_path)
    m = scoped_build(SEG_MODELS, dict(MICRO, img_size=512, use_rel_pos_bias=True, pretrained=str(path)))
    m.init_weights()
    rep = m.load_pretrained(str(path))
    assert all(k.startswith(("fpn1.", "fpn2.")) or "relative_position_bias_table" in k
               for k in rep["missing"])
    assert any("relative_position_bias_table" in k for k in rep["missing"])
    reasons = {r for _, r in rep["dropped"]}
    assert {"decoder", "projector", "mask token"} <= reasons
    assert any(k == "norm.weight" for k, _ in rep["dropped"])
    sd = m.state_dict()
    for k, v in enc.state_dict().items():
        if k == "pos_embed" or k.startswith("norm."):
            continue
        assert torch.equal(sd[k], v), k
    ref = resize_pos_embed(enc.pos_embed.data, (14, 14), (32, 32))
    assert torch.equal(sd["pos_embed"], ref)


def test_init_cfg_and_converted_file_and_mae_and_timm_layouts(tmp_path):
    enc, path = pretrain_file(tmp_path)
    cv.convert(path, tmp_path / "bb.safetensors", to="mm")
    for src in [tmp_path / "bb.safetensors", tmp_path / "bb.pth", tmp_path]:
        m = scoped_build(DET_MODELS, dict(MICRO, init_cfg=dict(type="Pretrained", checkpoint=str(src))))
        m.init_weights()
        assert m.is_init and torch.equal(m.blocks[3].mlp.fc2.weight, enc.blocks[3].mlp.fc2.weight)
    mae = {k: v for k, v in enc.state_dict().items()}
    mae.update(mask_token=torch.zeros(1, 1, 32), **{"decoder_embed.weight": torch.zeros(32, 64)})
    torch.save({"model": mae}, str(tmp_path / "mae.pth"))
    timm_like = {k: v for k, v in enc.state_dict().items()}
    timm_like.update({"head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)})
    save_file(timm_like, str(tmp_path / "timm.safetensors"))
    for src in ["mae.pth", "timm.safetensors"]:
        m = MixedAEViT(arch="micro", norm_cfg=dict(type="BN"))
        rep = m.load_pretrained(str(tmp_path / src))
        assert all(k.startswith(("fpn1.", "fpn2.")) for k in rep["missing"])


def test_unexpected_or_missing_keys_fail_naming_them(tmp_path):
    enc, _ = pretrain_file(tmp_path)
    sd = dict(enc.state_dict())
    del sd["blocks.2.attn.proj.weight"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    m = MixedAEViT(arch="micro", norm_cfg=dict(type="BN"))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\.attn\.proj\.weight"):
        m.load_pretrained(str(tmp_path / "missing.safetensors"))
    # a deeper checkpoint: blocks.4..11 are unexpected for a 4-block model
    big = create_vit("micro")
    big_sd = dict(big.state_dict())
    for i in range(4, 6):
        for k, v in big.blocks[0].state_dict().items():
            big_sd[f"blocks.{i}.{k}"] = v.clone()
    save_file(big_sd, str(tmp_path / "deep.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.4\."):
        m.load_pretrained(str(tmp_path / "deep.safetensors"))
    # a wider checkpoint: shape mismatch named
    wide = create_vit("tiny")
    save_file(dict(wide.state_dict()), str(tmp_path / "wide.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        m.load_pretrained(str(tmp_path / "wide.safetensors"))
    # relative tables in the checkpoint but none in the model
    (tmp_path / "rel").mkdir()
    _, rel = pretrain_file(tmp_path / "rel", rel_pos=True)
    with pytest.raises(CheckpointError, match="use_rel_pos_bias=False"):
        m.load_pretrained(str(rel))


def test_relative_tables_are_loaded_and_resized(tmp_path):
    enc, path = pretrain_file(tmp_path, rel_pos=True)
    with torch.no_grad():
        for b in enc.blocks:
            b.attn.relative_position_bias_table.normal_()
    save_file({f"encoder.{k}": v for k, v in enc.state_dict().items()}, str(path))
    m = MixedAEViT(arch="micro", img_size=224, use_rel_pos_bias=True, norm_cfg=dict(type="BN"))
    rep = m.load_pretrained(str(path))
    assert not any("relative" in k for k in rep["missing"])
    assert torch.equal(m.blocks[1].attn.relative_position_bias_table,
                       enc.blocks[1].attn.relative_position_bias_table)
    m512 = MixedAEViT(arch="micro", img_size=512, use_rel_pos_bias=True, norm_cfg=dict(type="BN"))
    m512.load_pretrained(str(path))
    assert m512.blocks[0].attn.relative_position_bias_table.shape[0] == 63 * 63 + 3


@pytest.mark.parametrize("patch", [16, 8])
def test_adapter_gives_the_declared_strides_for_any_patch(patch):
    """Patch 8 must not silently give strides 2/4/8/16: the adapter resamples to out_strides."""
    m = MixedAEViT(arch="micro", patch_size=patch, img_size=64, out_indices=(0, 1, 2, 3),
                   norm_cfg=dict(type="BN")).eval()
    assert m.out_strides == (4, 8, 16, 32)
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 128, 192))
    assert [tuple(o.shape[-2:]) for o in outs] == [(128 // s, 192 // s) for s in (4, 8, 16, 32)]
    if patch == 16:   # exactly BEiT's fpn1..fpn4 (checkpoint keys unchanged)
        assert [type(x).__name__ for x in m.fpn1] == ["ConvTranspose2d", "BatchNorm2d", "GELU",
                                                      "ConvTranspose2d"]
        assert isinstance(m.fpn3, torch.nn.Identity) and m.fpn4.stride == 2


def test_unreachable_strides_are_refused():
    with pytest.raises(ValueError, match=r"patch size\) 14 cannot give out_strides \[4, 8, 16, 32\]"):
        MixedAEViT(arch="micro", patch_size=14, img_size=56, norm_cfg=dict(type="BN"))
    with pytest.raises(ValueError, match="cannot give out_strides"):
        MixedAEViT(arch="micro", patch_size=32, img_size=64, norm_cfg=dict(type="BN"))


def test_pos_embed_resized_once_at_load_to_a_non_square_grid(tmp_path):
    """iBOT (COCO): the 14x14 embedding is resized at load to the 672x1092 training grid
    (42x68) and learnt there; an input of another size gets it resized from that grid."""
    enc, path = pretrain_file(tmp_path)
    m = MixedAEViT(arch="micro", img_size=(672, 1092), norm_cfg=dict(type="BN"))
    assert tuple(m.grid_size) == (42, 68) and m.pos_embed.shape == (1, 1 + 42 * 68, 64)
    assert m.pos_embed.requires_grad
    m.load_pretrained(str(path))
    ref = F.interpolate(enc.pos_embed.data[:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2),
                        size=(42, 68), mode="bicubic", align_corners=False)
    assert torch.equal(m.pos_embed.data[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 64))
    assert torch.equal(m.pos_embed.data[:, :1], enc.pos_embed.data[:, :1])
    assert m.pos_embed_for((42, 68)) is m.pos_embed   # the training grid: used as stored
    got = m.pos_embed_for((50, 83))
    ref = F.interpolate(m.pos_embed[:, 1:].reshape(1, 42, 68, 64).permute(0, 3, 1, 2),
                        size=(50, 83), mode="bicubic", align_corners=False)
    assert torch.allclose(got[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 64))
    # a checkpoint of this backbone (same 42x68 grid) loads back unchanged
    save_file({f"backbone.{k}": v for k, v in m.state_dict().items()},
              str(tmp_path / "mm.safetensors"))
    m2 = MixedAEViT(arch="micro", img_size=(672, 1092), norm_cfg=dict(type="BN"))
    m2.load_pretrained(str(tmp_path / "mm.safetensors"))
    assert torch.equal(m2.pos_embed, m.pos_embed)


def test_activation_checkpointing_gives_the_same_gradients():
    """with_cp (iBOT's use_checkpoint): same loss and gradients as the plain forward, drop path
    included (the recomputation replays the RNG state)."""
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        m = MixedAEViT(arch="micro", img_size=64, drop_path_rate=0.3, with_cp=with_cp,
                       norm_cfg=dict(type="BN")).train()
        x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        loss = sum((o ** 2).mean() for o in m(x))
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                      if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and len(g0) > 20
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7), n
    assert all(b.with_cp for b in m.blocks)


def test_activation_checkpointing_recomputes_the_blocks():
    """with_cp really checkpoints: each block runs twice per training step (forward and the
    recomputation in backward), once without it or under no_grad."""
    counts = {}
    for with_cp in (False, True):
        m = MixedAEViT(arch="micro", img_size=64, with_cp=with_cp, norm_cfg=dict(type="BN"))
        n = [0]
        m.blocks[1].mlp.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        sum(o.sum() for o in m(torch.randn(1, 3, 64, 64))).backward()
        with torch.no_grad():
            m(torch.randn(1, 3, 64, 64))
        counts[with_cp] = n[0]
    assert counts == {False: 2, True: 3}


def test_input_not_a_multiple_of_the_patch_is_padded_like_mmseg_vit():
    """mmseg's ViT pads the bottom/right to a whole patch (PatchEmbed padding='corner')."""
    m = MixedAEViT(arch="micro", img_size=64, norm_cfg=dict(type="BN")).eval()
    x = torch.randn(1, 3, 67, 101)
    with torch.no_grad():
        outs = m(x)
        ref = m(F.pad(x, (0, 112 - 101, 0, 80 - 67)))
    assert [tuple(o.shape[-2:]) for o in outs] == [(20, 28), (10, 14), (5, 7), (2, 3)]
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))
