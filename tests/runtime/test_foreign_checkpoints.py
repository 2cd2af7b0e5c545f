"""Checkpoints that are not ours: issue 17 item 8 (files that are no checkpoint at all are
named for what they are, without torch's warnings; ``convert`` into a directory; NaN weights)
and issue 18 (mmpretrain, BEiT, iBOT / DINO ViT checkpoints read strictly)."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mixedae import convert as cv
from mixedae.classification import finetune as F
from mixedae.cli import main as cli_main

from conftest import data_dir
from test_cli_errors import no_model, one_line  # noqa: F401  (fixture)
from test_convert import fake_pretrain_state


# ---- issue 17 item 8 -------------------------------------------------------------------------
@pytest.mark.parametrize("kind,needle", [
    ("pickle", "a plain pickle (protocol 4), not a torch.save file"),
    ("text", "a text file (starts with 'model: vit_base')"),
    ("npy", "a numpy .npy array"),
    ("empty", "an empty file"),
])
def test_checkpoint_that_is_no_torch_file_is_named_for_what_it_is(tmp_path, capsys, no_model,
                                                                   kind, needle):
    bad = tmp_path / "weights.pth"
    if kind == "pickle":
        bad.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    elif kind == "text":
        bad.write_text("model: vit_base\nlr: 0.1\n")
    elif kind == "npy":
        with open(bad, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        bad.write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = F.main(["--data", str(data_dir("cls_tiny") / "cifar10"), "--val-folder", "test",
                     "--model", "micro", "--patch-size", "8", "--img-size", "32",
                     "--output-dir", str(tmp_path / "o"), "--checkpoint", str(bad)])
    err = one_line(capsys, rc, f"{bad}: not a readable torch checkpoint: {needle}")
    assert "KeyError" not in err and "Unsupported operand" not in err, err
    assert [str(w.message)[:80] for w in caught if issubclass(w.category, UserWarning)] == []


def test_convert_into_an_existing_directory_is_refused(tmp_path, capsys):
    _, sd = fake_pretrain_state()
    save_file(sd, str(tmp_path / "m.safetensors"))
    (tmp_path / "out").mkdir()
    rc = cli_main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "out")])
    one_line(capsys, rc, f"output {tmp_path / 'out'} is a directory: give the output file's "
                         f"name, e.g. {tmp_path / 'out' / 'backbone_mm.safetensors'}")
    assert not list(tmp_path.glob("out.*")) and not list((tmp_path / "out").iterdir())


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path, capsys):
    _, sd = fake_pretrain_state()
    sd["encoder.blocks.1.mlp.fc1.weight"][0, :3] = float("nan")
    sd["encoder.pos_embed"][0, 0, 0] = float("inf")
    save_file(sd, str(tmp_path / "m.safetensors"))
    src, out = str(tmp_path / "m.safetensors"), tmp_path / "o.safetensors"
    rc = cli_main(["convert", src, str(out), "--to", "vit"])
    one_line(capsys, rc, "non-finite weights (NaN/Inf, a diverged run?) in blocks.1.mlp.fc1.weight "
                         "(3 of 16384 values), pos_embed (1 of 12608 values) [2 tensors]; nothing "
                         "written (--allow-nonfinite converts them anyway)")
    assert not out.exists()
    assert cli_main(["convert", src, str(out), "--to", "vit", "--allow-nonfinite"]) == 0
    assert "non-finite values kept (--allow-nonfinite): blocks.1.mlp.fc1.weight" in \
        capsys.readouterr().out
    assert torch.isnan(load_file(str(out))["blocks.1.mlp.fc1.weight"]).sum() == 3


# ---- issue 18: checkpoints of other code bases ----------------------------------------------
def mmpretrain_layout(vit_sd):
    """Our ViT's tensors under mmpretrain's key names (VisionTransformer with
    TransformerEncoderLayer, mmcv PatchEmbed / FFN), as an MAE checkpoint: backbone + neck."""
    import re
    out = {}
    for k, v in vit_sd.items():
        k = re.sub(r"^patch_embed\.proj\.", "patch_embed.projection.", k)
        k = re.sub(r"^blocks\.(\d+)\.norm([12])\.", r"layers.\1.ln\2.", k)
        k = re.sub(r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0.", k)
        k = re.sub(r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1.", k)
        k = re.sub(r"^blocks\.(\d+)\.attn\.", r"layers.\1.attn.", k)
        k = re.sub(r"^norm\.", "ln1.", k)
        out["backbone." + k] = v.clone()
    out.update({"neck.mask_token": torch.zeros(1, 1, 16),
                "neck.decoder_embed.weight": torch.randn(16, 64),
                "neck.decoder_blocks.0.ln1.weight": torch.ones(16)})
    return out


def test_mmpretrain_mae_checkpoint_converts_and_loads_strictly(tmp_path, capsys):
    from mixedae.model.vit import create_vit
    torch.manual_seed(0)
    vit = create_vit("micro")
    ref = {k: v + 0.01 * torch.randn_like(v) for k, v in vit.state_dict().items()}
    sd = mmpretrain_layout(ref)
    assert "backbone.layers.3.ffn.layers.0.0.weight" in sd and "backbone.ln1.bias" in sd
    torch.save({"state_dict": sd, "meta": {"mmpretrain_version": "1.2.0"}}, tmp_path / "mae.pth")
    rep = cv.convert(tmp_path / "mae.pth", tmp_path / "ours.safetensors", to="vit")
    assert rep["source"] == "mmpretrain"
    assert {k for k, _ in rep["dropped"]} == {"neck.mask_token", "neck.decoder_embed.weight",
                                               "neck.decoder_blocks.0.ln1.weight"}
    back = create_vit("micro")
    back.load_state_dict(load_file(str(tmp_path / "ours.safetensors")), strict=True)
    assert all(torch.equal(back.state_dict()[k], ref[k]) for k in ref)


def test_mmpretrain_layer_scale_is_refused_naming_the_keys(tmp_path, capsys):
    from mixedae.model.vit import create_vit
    sd = mmpretrain_layout(create_vit("micro").state_dict())
    sd["backbone.layers.0.attn.gamma1.weight"] = torch.ones(64)
    sd["backbone.layers.0.ffn.gamma2.weight"] = torch.ones(64)
    save_file(sd, str(tmp_path / "ls.safetensors"))
    rc = cli_main(["convert", str(tmp_path / "ls.safetensors"), str(tmp_path / "o.safetensors")])
    one_line(capsys, rc, "keys of an 'mmpretrain' checkpoint that our ViT cannot represent: "
                         "backbone.layers.0.attn.gamma1.weight, backbone.layers.0.ffn.gamma2.weight")
    assert not (tmp_path / "o.safetensors").exists()


def dino_checkpoint(student_sd, teacher_sd, extra_backbone=None):
    """A DINO / iBOT training checkpoint as main_dino.py / main_ibot.py save it: student (DDP:
    module.backbone.*, module.head.*), teacher (backbone.*, head.*), optimizer, args, ..."""
    import argparse
    head = {"head.mlp.0.weight": torch.randn(32, 64), "head.last_layer.weight_g": torch.ones(8, 1),
            "head.last_layer.weight_v": torch.randn(8, 32)}
    teacher = {**{f"backbone.{k}": v for k, v in teacher_sd.items()}, **head,
               **(extra_backbone or {})}
    student = {f"module.{k}": v for k, v in
               {**{f"backbone.{k}": v for k, v in student_sd.items()}, **head}.items()}
    return {"student": student, "teacher": teacher, "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3, "args": argparse.Namespace(arch="vit_small", lr=0.0005, out_dim=8),
            "dino_loss": {"center": torch.zeros(1, 8)}}


def test_dino_and_ibot_checkpoints_read_the_teacher(tmp_path, capsys):
    from mixedae.model.vit import create_vit
    torch.manual_seed(0)
    student, teacher = create_vit("micro").state_dict(), create_vit("micro").state_dict()
    ibot_extra = {"backbone.masked_embed": torch.zeros(1, 64)}
    for name, extra in (("dino", None), ("ibot", ibot_extra)):
        torch.save(dino_checkpoint(student, teacher, extra), tmp_path / f"{name}.pth")
        rep = cv.convert(tmp_path / f"{name}.pth", tmp_path / f"{name}.safetensors", to="vit")
        assert rep["source"] == "dino"
        reasons = {r for _, r in rep["dropped"]}
        assert reasons == ({"DINO / iBOT projection head"} | ({"mask token (iBOT)"} if extra
                                                              else set())), reasons
        back = create_vit("micro")
        back.load_state_dict(load_file(str(tmp_path / f"{name}.safetensors")), strict=True)
        assert all(torch.equal(back.state_dict()[k], teacher[k]) for k in teacher)
        assert not torch.equal(back.state_dict()["blocks.0.attn.qkv.weight"],
                               student["blocks.0.attn.qkv.weight"])


def test_ibot_layer_scale_is_refused_naming_the_keys(tmp_path, capsys):
    from mixedae.model.vit import create_vit
    sd = create_vit("micro").state_dict()
    extra = {"backbone.blocks.0.gamma_1": torch.ones(64), "backbone.blocks.0.gamma_2": torch.ones(64)}
    torch.save(dino_checkpoint(sd, sd, extra), tmp_path / "ibot_ls.pth")
    rc = cli_main(["convert", str(tmp_path / "ibot_ls.pth"), str(tmp_path / "o.safetensors")])
    one_line(capsys, rc, "unknown keys in a 'dino' checkpoint: backbone.blocks.0.gamma_1, "
                         "backbone.blocks.0.gamma_2")
