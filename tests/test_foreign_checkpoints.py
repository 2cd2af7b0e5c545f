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
