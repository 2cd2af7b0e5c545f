"""The classification command lines: every flag checked before any work (one line naming the
flag and value, exit code 2, nothing written), worker counts bounded by the machine, the
protocol defaults of ``transfer`` and the previous behaviour behind flags, registration."""
import pytest
import torch

from mixedae import cli
from mixedae.classification import cli_common as C
from mixedae.classification import datasets as D
from mixedae.classification import engine as E
from mixedae.classification import finetune as F
from mixedae.classification import knn as K
from mixedae.classification import linprobe as L
from mixedae.classification import transfer as T

MAINS = {"transfer": T.main, "finetune": F.main, "linprobe": L.main, "knn": K.main}
BAD = [  # (command, flags, text expected in the error line)
    ("transfer", ["--iters", "0"], "--iters 0: must be > 0"),
    ("transfer", ["--batch-size", "-8"], "--batch-size -8: must be > 0"),
    ("transfer", ["--momentum", "1.5"], "--momentum 1.5: must be in [0, 1)"),
    ("transfer", ["--val-frac", "0"], "--val-frac 0.0: must be in (0, 1)"),
    ("transfer", ["--eval-crop-pct", "0"], "--eval-crop-pct 0.0: must be in (0, 1]"),
    ("transfer", ["--weight-decay", "nan"], "--weight-decay nan: must be >= 0"),
    ("transfer", ["--warmup-iters", "9", "--iters", "9"], "--warmup-iters 9 must be < --iters"),
    ("transfer", ["--lrs", "0.1,-1"], "--lrs must be positive numbers"),
    ("transfer", ["--workers", "-1"], "--workers -1: must be >= 0"),
    ("transfer", ["--img-size", "30", "--patch-size", "8"], "--img-size 30 is not a multiple"),
    ("transfer", ["--datasets", "mnist"], "unknown dataset 'mnist'"),
    ("finetune", ["--epochs", "0"], "--epochs 0: must be > 0"),
    ("finetune", ["--layer-decay", "1.2"], "--layer-decay 1.2: must be in (0, 1]"),
    ("finetune", ["--mixup-prob", "2"], "--mixup-prob 2.0: must be in [0, 1]"),
    ("finetune", ["--layer-decay-sweep", "0.7,x"], "--layer-decay-sweep '0.7,x'"),
    ("finetune", ["--max-steps", "0"], "--max-steps 0: must be > 0"),
    ("finetune", ["--aa", "rand-x9"], "--aa 'rand-x9'"),
    ("finetune", ["--remode", "zero"], "--remode 'zero': choose const, rand or pixel"),
    ("linprobe", ["--blr", "0"], "--blr 0.0: must be > 0"),
    ("linprobe", ["--warmup-epochs", "90"], "--warmup-epochs 90.0 must be < --epochs 90"),
    ("linprobe", ["--accum-iter", "0"], "--accum-iter 0: must be > 0"),
    ("knn", ["--nb-knn", "20", "0"], "--nb-knn 0: must be > 0"),
    ("knn", ["--temperature", "-0.1"], "--temperature -0.1: must be > 0"),
    ("knn", ["--chunk", "0"], "--chunk 0: must be > 0"),
]


def argv(cmd, tmp_path, extra):
    out = ["--output-dir", str(tmp_path / "out")]
    if cmd == "transfer":
        return ["--datasets", "cifar10", "--root", str(tmp_path), *out, *extra]
    if cmd == "finetune":
        return ["--data", str(tmp_path), *out, *extra]
    return ["--data", str(tmp_path), "--train-folder", ".", "--val-folder", ".", *out, *extra]


@pytest.mark.parametrize("cmd,flags,text", BAD)
def test_bad_flags_one_line_before_any_work(tmp_path, capsys, cmd, flags, text):
    assert MAINS[cmd](argv(cmd, tmp_path, flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mixedae {cmd}: error: ") and text in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_data_flags(tmp_path, capsys):
    assert K.main(["--output-dir", str(tmp_path / "o")]) == 2
    assert "exactly one of --data" in capsys.readouterr().err
    assert L.main(["--data", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"missing folder {tmp_path / 'train'}" in capsys.readouterr().err
    assert K.main(["--datasets", "dtd,pets", "--root", str(tmp_path), "--output-dir",
                   str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dtd/dtd/labels/train1.txt" in err and "oxford-iiit-pet" in err
    assert not (tmp_path / "o").exists()


def test_workers_never_exceed_cores(monkeypatch, capsys):
    monkeypatch.setattr(C.os, "cpu_count", lambda: 2)
    args = T.get_parser().parse_args(["--root", "r", "--output-dir", "o"])
    C.resolve_workers(args, "transfer")
    assert args.workers == 2 and capsys.readouterr().err == ""  # default 8 → 2, silently
    args.workers = 16
    C.resolve_workers(args, "transfer")
    assert args.workers == 2 and "--workers 16 lowered to 2" in capsys.readouterr().err
    args.workers = 0
    C.resolve_workers(args, "transfer")
    assert args.workers == 0


def test_transfer_protocol_defaults_and_previous_behaviour():
    p = T.get_parser()
    a = p.parse_args(["--root", "r", "--output-dir", "o"])
    assert (a.nesterov, a.eval_crop_pct, a.val_split, a.momentum, a.weight_decay, a.iters,
            a.batch_size, a.lrs) == (True, 1.0, "official", 0.9, 0.0, 5000, 64,
                                     "0.001,0.003,0.01,0.03")
    model = torch.nn.Linear(2, 2)
    assert E.build_sgd(model, 0.1, a.momentum, a.weight_decay, a.nesterov).defaults["nesterov"]
    tf = [type(t).__name__ + str(getattr(t, "size", "")) for t in
          D.eval_transform(224, a.eval_crop_pct).transforms]
    assert tf[:2] == ["Resize224", "CenterCrop(224, 224)"]  # the protocol's Resize 224 → 224
    old = p.parse_args(["--root", "r", "--output-dir", "o", "--no-nesterov",
                        "--eval-crop-pct", "0.875", "--val-split", "holdout"])
    assert not E.build_sgd(model, 0.1, 0.9, 0.0, old.nesterov).defaults["nesterov"]
    assert D.eval_transform(224, old.eval_crop_pct).transforms[0].size == 256
    assert D.eval_transform(224, old.eval_crop_pct).transforms[1].size == (224, 224)


def test_commands_registered(capsys):
    assert {"finetune", "transfer", "linprobe", "knn"} <= set(cli.COMMANDS)
    for cmd in ("linprobe", "knn"):
        assert cli.main([cmd, "--help"]) == 0  # run_main turns argparse's exit into a code
    out = capsys.readouterr().out
    assert "mixedae linprobe" in out and "--feature {cls,avg}" in out and "--k K" in out
