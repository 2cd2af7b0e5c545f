"""The layer-decay parameter groups of fine-tuning and of the mm constructor, as a literal table
written down from the grouping of 2026-12-07 (before the ViT reported its own layer depth):
the model now answers ``get_layer_depth`` and both callers must still give these groups."""
import pytest

from mixedae.classification.finetune import build_param_groups
from mixedae.model.vit import create_vit

# block parameters of a rel-pos ViT block: name suffix -> weight decay applies
BLOCK = {"attn.proj.bias": False, "attn.proj.weight": True, "attn.qkv.bias": False,
         "attn.qkv.weight": True, "attn.relative_position_bias_table": True,
         "mlp.fc1.bias": False, "mlp.fc1.weight": True, "mlp.fc2.bias": False,
         "mlp.fc2.weight": True, "norm1.bias": False, "norm1.weight": False,
         "norm2.bias": False, "norm2.weight": False}
# layer id -> lr scale for 4 blocks and decay 0.5 (0.5 ** (5 - id))
SCALE = {0: 0.03125, 1: 0.0625, 2: 0.125, 3: 0.25, 4: 0.5, 5: 1.0}


def blocks(prefix: str = "") -> dict:
    return {f"{prefix}blocks.{i}.{s}": (i + 1, wd) for i in range(4) for s, wd in BLOCK.items()}


# fine-tuning (MAE param_groups_lrd): pos_embed / cls_token exempt from weight decay
FINETUNE = {"cls_token": (0, False), "pos_embed": (0, False), "patch_embed.proj.bias": (0, False),
            "patch_embed.proj.weight": (0, True), "fc_norm.bias": (5, False),
            "fc_norm.weight": (5, False), "head.bias": (5, False), "head.weight": (5, True),
            **blocks()}


def test_finetune_groups_are_todays():
    m = create_vit("micro", img_size=32, patch_size=8, num_classes=5, global_pool="avg",
                   learnable_pos_embed=True, rel_pos_bias=True)
    got = {n: (g["layer_id"], g["lr_scale"], g["weight_decay"])
           for g in build_param_groups(m, 1.0, 0.05, 0.5) for n in g["param_names"]}
    want = {n: (lid, SCALE[lid], 0.05 if wd else 0.0) for n, (lid, wd) in FINETUNE.items()}
    assert got == want


# mm (BEiT / iBOT runs): pos_embed and cls_token ARE decayed; adapter and heads: last id
MM_BACKBONE = {"backbone.cls_token": (0, True), "backbone.pos_embed": (0, True),
               "backbone.patch_embed.proj.bias": (0, False),
               "backbone.patch_embed.proj.weight": (0, True),
               "backbone.fpn1.0.bias": (5, False), "backbone.fpn1.0.weight": (5, True),
               "backbone.fpn1.1.bias": (5, False), "backbone.fpn1.1.weight": (5, False),
               "backbone.fpn1.3.bias": (5, False), "backbone.fpn1.3.weight": (5, True),
               "backbone.fpn2.0.bias": (5, False), "backbone.fpn2.0.weight": (5, True),
               **blocks("backbone.")}


def test_mm_constructor_groups_are_todays(tmp_path):
    pytest.importorskip("mmseg")
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope

    import mixedae.mm  # noqa: F401  (registers the backbone and the constructor)
    from mixedae.mm.runner import adapt_to_machine
    from mixedae.mm.smoke import tiny_seg_config
    cfg = tiny_seg_config(tmp_path)      # micro ViT (4 blocks), rel-pos, UperNet; decay 0.65
    init_default_scope("mmseg")
    adapt_to_machine(cfg, distributed=False)
    model = MODELS.build(cfg.model)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    got = {n: (g["layer_id"], g["lr"], g["weight_decay"])
           for g in ow.optimizer.param_groups for n in g["param_names"]}
    params = dict(model.named_parameters())
    want = dict(MM_BACKBONE)
    for n, p in params.items():          # decode / auxiliary heads: last id, 1-D exempt
        if not n.startswith("backbone."):
            want[n] = (5, p.ndim > 1)
    assert set(got) == set(want) == set(params)
    for n, (lid, wd) in want.items():
        assert got[n][0] == lid, n
        assert got[n][1] == pytest.approx(3e-4 * 0.65 ** (5 - lid), rel=1e-12), n
        assert got[n][2] == (0.05 if wd else 0.0), n


def test_base_vit_describes_its_layers_for_timm_and_mmpretrain():
    """``get_layer_depth`` (mmpretrain) and ``group_matcher`` (timm, read by timm's own
    ``group_parameters``) of the base ViT give the layers of the table above."""
    from timm.models import group_parameters
    m = create_vit("micro", img_size=32, patch_size=8, num_classes=5, global_pool="avg",
                   learnable_pos_embed=True, rel_pos_bias=True)
    names = dict(m.named_parameters())
    assert {n: m.get_layer_depth(n) for n in names} == {n: (lid, 6)
                                                         for n, (lid, _) in FINETUNE.items()}
    assert m.get_layer_depth("backbone.blocks.2.mlp.fc1.weight", "backbone.") == (3, 6)
    assert m.get_layer_depth("decode_head.conv_seg.weight", "backbone.") == (5, 6)
    timm_groups = group_parameters(m, m.group_matcher(coarse=False))   # ordinal -> names
    assert len(timm_groups) == 6
    by_timm = {n: i for i, group in enumerate(timm_groups.values()) for n in group}
    assert by_timm == {n: lid for n, (lid, _) in FINETUNE.items()}
    assert m.group_matcher(coarse=True) == m.group_matcher(coarse=False)
