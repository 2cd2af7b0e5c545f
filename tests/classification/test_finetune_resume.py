"""``mixedae finetune``: the per-size recipe (issue 16 §3, printed first: issue 18), a foreign
``--resume`` never touches OUT (issue 17 item 1), steps per epoch from the engine's one
function (issue 16 §4)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mixedae.classification import engine as E
from mixedae.classification import finetune as F
from mixedae.model.vit import create_vit

from test_cls_reliability import MICRO, small_cifar

pytestmark = pytest.mark.usefixtures("single_thread")
RUN = [*MICRO, "--val-folder", "test", "--batch-size", "8", "--workers", "0", "--no-progress",
       "--eval-batch-size", "64"]


def parse(*extra):
    args = F.get_parser().parse_args(["--data", "x", "--output-dir", "y", *extra])
    F.fill_defaults(args)
    return args


def test_layer_decay_and_drop_path_follow_the_model_size():
    b, big, tiny = parse(), parse("--model", "large"), parse("--model", "tiny")
    assert (b.layer_decay, b.drop_path) == (0.65, 0.1)        # MAE FINETUNE.md ViT-B
    assert (big.layer_decay, big.drop_path) == (0.75, 0.1)    # MAE's ViT-L decay; Tab. 5 drop path
    assert (tiny.layer_decay, tiny.drop_path) == (0.65, 0.1)  # unused sizes follow ViT-B
    given = parse("--model", "large", "--layer-decay", "0.7", "--drop-path", "0")
    assert (given.layer_decay, given.drop_path) == (0.7, 0.0)
    line = F.recipe_line(given)
    assert "layer decay 0.7 (given)" in line and "drop path 0 (given)" in line
    assert "ViT-L recipe" in line and "epochs 50" in line
    args = parse("--layer-decay-sweep", "paper")
    args.data = str(Path(__file__).parent)  # any existing directory
    args.model = "micro"
    assert F.check_args(args) == [0.65, 0.7, 0.75]


def pretraining_checkpoint(path: Path) -> Path:
    """A pretraining run's checkpoint.pth: resumable keys, the config, encoder./decoder. keys."""
    enc = create_vit("micro", patch_size=8, img_size=32)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd["decoder.mask_token"] = torch.zeros(1, 1, 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "step": 7,
                "rng": [{}], "config": json.dumps({"model": "micro"})}, path)
    return path


def test_foreign_resume_refused_and_good_checkpoint_kept(tmp_path, capsys):
    data = small_cifar(tmp_path / "d")
    ok = tmp_path / "ft_ok"
    base = ["--data", str(data), *RUN, "--output-dir", str(ok)]
    assert F.main([*base, "--max-steps", "2", "--save-every-steps", "1"]) == 0
    good = (ok / "checkpoint.pth").read_bytes()
    listing = sorted(p.name for p in ok.iterdir())
    capsys.readouterr()
    foreign = pretraining_checkpoint(tmp_path / "pre" / "checkpoint.pth")
    assert F.main([*base, "--max-steps", "4", "--resume", str(foreign)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretraining checkpoint" in err[0] and str(foreign) in err[0]
    assert (ok / "checkpoint.pth").read_bytes() == good
    assert sorted(p.name for p in ok.iterdir()) == listing
    # a fine-tuning checkpoint of another model into a fresh OUT: keys named, nothing written
    other = tmp_path / "ft_other"
    assert F.main(["--data", str(data), *RUN, "--output-dir", str(other), "--max-steps", "1",
                   "--model", "micro", "--patch-size", "16"]) == 0
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    assert F.main(["--data", str(data), *RUN, "--output-dir", str(fresh), "--max-steps", "2",
                   "--resume", str(other / "checkpoint.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "patch_size: checkpoint 16 vs now 8" in err[0]
    assert not fresh.exists()


def test_resume_checks_tensors_and_keeps_the_recipe_it_ran(tmp_path, capsys):
    data = small_cifar(tmp_path / "d")
    a = tmp_path / "a"
    assert F.main(["--data", str(data), *RUN, "--output-dir", str(a), "--max-steps", "1",
                   "--layer-decay", "0.75"]) == 0
    first = capsys.readouterr().out.splitlines()[0]  # the run's first log line: its recipe
    assert first.startswith("[finetune] recipe for micro (ViT-B recipe, used for micro")
    assert "layer decay 0.75 (given)" in first and "drop path 0.1;" in first
    # a run started under another layer decay keeps it when the flag is not given
    assert F.main(["--data", str(data), *RUN, "--output-dir", str(a), "--max-steps", "2",
                   "--resume", "auto"]) == 0
    assert "layer decay 0.75 (the resumed run's)" in capsys.readouterr().out
    ck = E.load_checkpoint(a / "checkpoint.pth")
    assert ck["step"] == 2 and ck["args"]["layer_decay"] == 0.75
    assert min(g["lr_scale"] for g in ck["optimizer"]["param_groups"]) == pytest.approx(0.75 ** 5)
    # same settings, other tensors (a head of 3 classes): the keys are named, OUT untouched
    ck["model"]["head.weight"] = ck["model"]["head.weight"][:3]
    bad = tmp_path / "bad.pth"
    torch.save(ck, bad)
    b = tmp_path / "b"
    capsys.readouterr()
    assert F.main(["--data", str(data), *RUN, "--output-dir", str(b), "--max-steps", "3",
                   "--layer-decay", "0.75", "--resume", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head.weight (3, 64) vs model (10, 64)" in err[0]
    assert "1 keys differ" in err[0] and not b.exists()


def test_steps_per_epoch_is_the_engines(tmp_path, monkeypatch):
    """2 ranks, 7 images, per-rank batch 1: the engine's sampler gives each rank
    ceil(7/2) = 4 batches an epoch; fine-tuning's own floor said 3."""
    root = tmp_path / "d"
    src = small_cifar(tmp_path / "src")
    for split, n in (("train", 7), ("test", 2)):
        files = sorted(p for p in (src / split).rglob("*.png"))[:n] or \
            sorted(p for p in (src / split).rglob("*") if p.is_file())[:n]
        for i, f in enumerate(files):
            d = root / split / ("a" if i % 2 else "b")
            d.mkdir(parents=True, exist_ok=True)
            (d / f.name).symlink_to(f.resolve())
    info = SimpleNamespace(world_size=2, rank=0, device=torch.device("cpu"))
    monkeypatch.setattr(F, "init_distributed", lambda: info)
    monkeypatch.setattr(F, "wrap_ddp", lambda m, i: m)
    monkeypatch.setattr(E, "get_world_size", lambda: 2)
    out = tmp_path / "o"
    assert F.main(["--data", str(root), *RUN, "--output-dir", str(out), "--batch-size", "2",
                   "--mixup", "0", "--cutmix", "0", "--max-steps", "1", "--epochs", "3",
                   "--warmup-epochs", "1"]) == 0
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["steps_per_epoch"] == E.steps_per_epoch(7, 1) == 4
    assert start["total_steps"] == 12
