"""MixedAELayerDecayOptimizerConstructor: exact lr / weight decay of every param group for a
tiny UperNet (mmseg) and a tiny Cascade Mask R-CNN (mmdet), built from the production
configs with a micro ViT."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import mixedae.mm  # noqa: F401
from mixedae.mm.runner import adapt_to_machine
from mixedae.mm.smoke import tiny_det_config, tiny_seg_config


def expected_layer(name: str, num_layers: int) -> int:
    """Independent statement of the documented rule (not a call into the code under test)."""
    if not name.startswith("backbone."):
        return num_layers + 1
    bare = name[len("backbone."):]
    if bare in ("cls_token", "pos_embed") or bare.startswith("patch_embed."):
        return 0
    if bare.startswith("blocks."):
        return int(bare.split(".")[1]) + 1
    return num_layers + 1


def expected_no_wd(name: str, p) -> bool:
    """BEiT's / iBOT's constructor as their runs apply it: 1-D parameters and biases only (their
    name test for pos_embed / cls_token never matches a ``backbone.``-prefixed name)."""
    return p.ndim == 1 or name.endswith(".bias")


def build(cfg, scope):
    init_default_scope(scope)
    adapt_to_machine(cfg, distributed=False)
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def check_groups(model, optim_wrapper, base_lr, wd, decay, num_layers, lr_mults=None):
    lr_mults = lr_mults or {}
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    layers = set()
    for g in optim_wrapper.optimizer.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            assert id(p) not in seen, f"{n} in two groups"
            seen.add(id(p))
            lid = expected_layer(n, num_layers)
            layers.add(lid)
            mult = next((v for k, v in sorted(lr_mults.items(), key=lambda kv: -len(kv[0]))
                         if k in n), 1.0)
            want_lr = base_lr * decay ** (num_layers + 1 - lid) * mult
            assert g["lr"] == pytest.approx(want_lr, rel=1e-12, abs=0), n
            assert g["weight_decay"] == (0.0 if expected_no_wd(n, p) else wd), n
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert seen == trainable
    assert layers == set(range(num_layers + 2))


def test_tiny_upernet_groups(tmp_path):
    cfg = tiny_seg_config(tmp_path)   # data root unused: no dataset is built
    assert cfg.optim_wrapper.constructor == "MixedAELayerDecayOptimizerConstructor"
    model, ow = build(cfg, "mmseg")
    check_groups(model, ow, 3e-4, 0.05, 0.65, 4)
    g = {n: (grp["lr"], grp["weight_decay"]) for grp in ow.optimizer.param_groups
         for n in grp["param_names"]}
    # BEiT (ADE20K): the position embedding, cls token and relative tables are decayed
    assert g["backbone.pos_embed"] == (pytest.approx(3e-4 * 0.65 ** 5), 0.05)
    assert g["backbone.cls_token"] == (pytest.approx(3e-4 * 0.65 ** 5), 0.05)
    assert g["backbone.blocks.0.attn.relative_position_bias_table"] == (
        pytest.approx(3e-4 * 0.65 ** 4), 0.05)
    assert g["backbone.blocks.3.mlp.fc1.weight"] == (pytest.approx(3e-4 * 0.65), 0.05)
    assert g["backbone.fpn1.0.weight"] == (pytest.approx(3e-4), 0.05)
    assert g["decode_head.conv_seg.weight"] == (pytest.approx(3e-4), 0.05)
    assert g["decode_head.conv_seg.bias"] == (pytest.approx(3e-4), 0.0)
    assert g["backbone.blocks.2.norm1.weight"][1] == 0.0


def test_tiny_cascade_mask_rcnn_groups(tmp_path):
    cfg = tiny_det_config(tmp_path)
    model, ow = build(cfg, "mmdet")
    check_groups(model, ow, 1e-4, 0.05, 0.75, 4)
    g = {n: (grp["lr"], grp["weight_decay"]) for grp in ow.optimizer.param_groups
         for n in grp["param_names"]}
    assert g["backbone.patch_embed.proj.weight"] == (pytest.approx(1e-4 * 0.75 ** 5), 0.05)
    assert g["backbone.cls_token"][1] == 0.05 and g["backbone.pos_embed"][1] == 0.05   # iBOT
    assert g["roi_head.bbox_head.2.fc_cls.weight"] == (pytest.approx(1e-4), 0.05)
    assert g["roi_head.bbox_head.0.shared_convs.0.bn.weight"] == (pytest.approx(1e-4), 0.0)
    assert g["backbone.fpn1.1.weight"] == (pytest.approx(1e-4), 0.0)   # the adapter's BN


def test_pos_embed_exempt_through_custom_keys(tmp_path):
    cfg = tiny_det_config(tmp_path)
    cfg.optim_wrapper.paramwise_cfg.custom_keys = {"pos_embed": dict(decay_mult=0.0)}
    model, ow = build(cfg, "mmdet")
    g = {n: grp["weight_decay"] for grp in ow.optimizer.param_groups for n in grp["param_names"]}
    assert g["backbone.pos_embed"] == 0.0 and g["backbone.cls_token"] == 0.05


def test_custom_keys_honoured(tmp_path):
    cfg = tiny_seg_config(tmp_path)
    cfg.optim_wrapper.paramwise_cfg.custom_keys = {
        "decode_head": dict(lr_mult=10.0), "decode_head.conv_seg": dict(lr_mult=2.0,
                                                                        decay_mult=0.5)}
    model, ow = build(cfg, "mmseg")
    g = {n: (grp["lr"], grp["weight_decay"]) for grp in ow.optimizer.param_groups
         for n in grp["param_names"]}
    assert g["decode_head.bottleneck.conv.weight"] == (pytest.approx(3e-3), 0.05)
    assert g["decode_head.conv_seg.weight"] == (pytest.approx(6e-4), pytest.approx(0.025))
    assert g["decode_head.conv_seg.bias"] == (pytest.approx(6e-4), 0.0)
    assert g["backbone.blocks.0.attn.qkv.weight"] == (pytest.approx(3e-4 * 0.65 ** 4), 0.05)


def test_bad_paramwise_cfg_is_one_clear_error(tmp_path):
    cfg = tiny_seg_config(tmp_path)
    cfg.optim_wrapper.paramwise_cfg.layer_decay = 0.6   # typo of layer_decay_rate
    with pytest.raises(ValueError, match="layer_decay"):
        build(cfg, "mmseg")


def test_scheduler_keeps_per_group_ratio(tmp_path):
    """LinearLR/PolyLR scale every group by the same factor (layer ratios preserved)."""
    cfg = tiny_seg_config(tmp_path, iters=6)
    model, ow = build(cfg, "mmseg")
    from mmengine.registry import PARAM_SCHEDULERS
    scheds = [PARAM_SCHEDULERS.build(dict(s, optimizer=ow)) for s in cfg.param_scheduler]
    lrs0 = [g["initial_lr"] for g in ow.optimizer.param_groups]
    for _ in range(3):
        ow.optimizer.step()
        for s in scheds:
            s.step()
    ratios = {round(g["lr"] / l0, 12) for g, l0 in zip(ow.optimizer.param_groups, lrs0)}
    assert len(ratios) == 1
    assert torch.isfinite(torch.tensor(list(ratios))).all()


# ---- the depth comes from the backbone; one grouping implementation -------------------------
def test_depth_comes_from_the_backbone(tmp_path):
    """No num_layers in the configs: a 12-block backbone gets 14 layer ids whatever the config
    was written for (the old bug: a deeper arch silently got scales > 1)."""
    cfg = tiny_seg_config(tmp_path)
    assert "num_layers" not in cfg.optim_wrapper.paramwise_cfg
    cfg.model.backbone.arch = "tiny"   # 12 blocks, 192 wide
    cfg.model.decode_head.in_channels = [192] * 4
    cfg.model.auxiliary_head.in_channels = 192
    model, ow = build(cfg, "mmseg")
    check_groups(model, ow, 3e-4, 0.05, 0.65, 12)
    assert max(g["lr"] for g in ow.optimizer.param_groups) == pytest.approx(3e-4)


def test_stated_num_layers_must_match(tmp_path):
    cfg = tiny_seg_config(tmp_path)
    cfg.optim_wrapper.paramwise_cfg.num_layers = 12   # the backbone has 4 blocks
    with pytest.raises(ValueError, match=r"num_layers=12 but the backbone has 4 blocks"):
        build(cfg, "mmseg")
    cfg.optim_wrapper.paramwise_cfg.num_layers = 4    # agreeing is accepted
    build(cfg, "mmseg")


def test_get_layer_depth_is_mmpretrain_style(tmp_path):
    cfg = tiny_seg_config(tmp_path)
    model, _ = build(cfg, "mmseg")
    bb = model.backbone
    assert bb.num_layers == 4
    for name, _ in model.named_parameters():
        assert bb.get_layer_depth(name, "backbone.") == (expected_layer(name, 4), 6), name
    assert bb.get_layer_depth("blocks.2.attn.qkv.weight") == (3, 6)   # no prefix


def test_one_grouping_implementation(tmp_path):
    """The mm constructor's (lr, weight decay, layer id) of every parameter are those of
    runtime.layer_decay_param_groups, the function classification fine-tuning uses."""
    from mixedae.runtime.layer_decay import layer_decay_param_groups
    cfg = tiny_det_config(tmp_path)
    model, ow = build(cfg, "mmdet")
    mm = {n: (g["lr"], g["weight_decay"], g["layer_id"]) for g in ow.optimizer.param_groups
          for n in g["param_names"]}
    ref = {n: (g["lr"], g["weight_decay"], g["layer_id"])
           for g in layer_decay_param_groups(model, 1e-4, 0.05, 0.75, "backbone.")
           for n in g["param_names"]}
    assert mm == ref and len(mm) == sum(p.requires_grad for p in model.parameters())


def test_backbone_without_depth_is_refused(tmp_path):
    cfg = tiny_seg_config(tmp_path)
    model, _ = build(cfg, "mmseg")
    model.backbone = torch.nn.Sequential(torch.nn.Linear(2, 2))
    from mixedae.mm.optim import MixedAELayerDecayOptimizerConstructor
    ctor = MixedAELayerDecayOptimizerConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05)),
        dict(layer_decay_rate=0.75))
    with pytest.raises(ValueError, match="does not report its depth"):
        ctor(model)
