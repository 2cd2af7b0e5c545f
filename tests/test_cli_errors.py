"""Issue 10 item 5: every expected failure of every command is one line on stderr, exit code
!= 0 and no traceback (the traceback only with --debug); flags are checked before any work."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mixedae import cli
from mixedae.classification import finetune as F
from mixedae.classification import transfer as T
from mixedae.pretrain import command, demo, engine
from mixedae.runtime.distributed import timeout_seconds
from mixedae.runtime.errors import ConfigError

from conftest import REPO, data_dir
from test_train import MICRO_ARGS, synthetic_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def one_line(capsys, rc, needle, code=2):
    err = capsys.readouterr().err.strip()
    assert rc == code, (rc, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "error" in err and needle in err, err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Any of these failures must come before a model is built."""
    def refuse(*a, **k):
        raise AssertionError("a model was built before the input was checked")
    monkeypatch.setattr(engine, "MixedAutoencoder", refuse)
    monkeypatch.setattr(F, "create_vit", refuse)
    from mixedae.classification import transfer_protocol
    monkeypatch.setattr(transfer_protocol, "create_vit", refuse)


@pytest.mark.parametrize("args,needle", [
    (["--blr", "-0.0001"], "blr=-0.0001 must be positive"),
    (["--blr", "-1e-4"], "argument --blr: expected one argument (see --help)"),
    (["--lr", "-0.1"], "lr=-0.1 must be positive"),
    (["--lr", "nan"], "lr=nan must be positive"),
    (["--batch-size", "0"], "batch_size=0 must be positive"),
    (["--batch-size", "-8"], "batch_size=-8 must be positive"),
    (["--patch-size", "0"], "patch_size=0 must be positive"),
    (["--mask-patch-size", "0"], "mask_patch_size=0 must be positive"),
    (["--set", "mix_ratio=abc"], "mix_ratio='abc' must be of type float"),
    (["--set", "betas=[0.9]"], "betas=(0.9,) must be of type tuple[float, float]"),
    (["--set", "crop_scale=[0.9,0.2]"], "crop_scale=(0.9, 0.2)"),
    (["--set", "epochs=0"], "epochs=0 must be positive"),
    (["--num-workers", "-1"], "--num-workers -1: must be >= 0"),
    (["--max-steps", "0"], "--max-steps 0: must be >= 1"),
    (["--save-every", "0"], "--save-every 0: must be >= 1"),
    (["--time-limit", "-5"], "--time-limit -5.0: must be > 0"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--set", "nonsense=1"], "unknown config key(s) ['nonsense']"),
])
def test_pretrain_bad_flags(tmp_path, capsys, no_model, args, needle):
    data, out = synthetic_folder(tmp_path / "data", n=8), tmp_path / "out"
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data), "--output-dir",
                                    str(out), "--device", "cpu", *args])
    one_line(capsys, rc, needle)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_pretrain_cuda_without_gpu(tmp_path, capsys, no_model):
    data = synthetic_folder(tmp_path / "data", n=8)
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data), "--output-dir",
                                    str(tmp_path / "out"), "--device", "cuda"])
    one_line(capsys, rc, "--device cuda: no CUDA GPU is available")


def test_pretrain_unwritable_output_dir(tmp_path, capsys, no_model):
    data = synthetic_folder(tmp_path / "data", n=8)
    (tmp_path / "file").write_text("a file, not a folder")
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data), "--device", "cpu",
                                    "--output-dir", str(tmp_path / "file" / "run")])
    one_line(capsys, rc, f"{tmp_path / 'file'} is not a directory")


@pytest.mark.parametrize("kind,needle", [
    ("safetensors", "holds model weights only (safetensors)"),
    ("garbage", "not a readable torch checkpoint"),
    ("truncated", "not a readable torch checkpoint"),
    ("foreign", "not a resumable checkpoint of this project (missing optimizer, step, rng)"),
])
def test_pretrain_resume_from_a_wrong_file(tmp_path, capsys, no_model, kind, needle):
    data, f = synthetic_folder(tmp_path / "data", n=8), tmp_path / "ck"
    if kind == "safetensors":
        f = tmp_path / "model.safetensors"
        save_file({"a": torch.zeros(2)}, str(f))
    elif kind == "garbage":
        f.write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"model": {"a": torch.zeros(1000)}}, f)
        if kind == "truncated":
            f.write_bytes(f.read_bytes()[:300])
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data), "--device", "cpu",
                                    "--output-dir", str(tmp_path / "out"), "--resume", str(f)])
    assert str(f) in one_line(capsys, rc, needle)


def test_all_unreadable_folder_refused_before_the_model(tmp_path, capsys, no_model):
    data = tmp_path / "data" / "cls"
    data.mkdir(parents=True)
    for i in range(4):
        (data / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data.parent), "--device",
                                    "cpu", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "Traceback" not in "".join(err)
    assert f"dataset folder {data.parent}: none of the 4 images can be read" in err[-1]
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    data = synthetic_folder(tmp_path / "data", n=8)
    args = ["pretrain", *MICRO_ARGS, "--batch-size", "8", "--data", str(data), "--output-dir",
            str(tmp_path / "o"), "--lr", "-1"]
    one_line(capsys, cli.main(args), "mixedae pretrain: error: lr=-1.0 must be positive")
    # with --debug the exception escapes: the interpreter prints the traceback, exit code 1
    r = subprocess.run([sys.executable, "-m", "mixedae.cli", *args, "--debug"], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert "ConfigError: lr=-1.0 must be positive" in r.stderr


def test_demo_bad_flags(tmp_path, capsys):
    rc = demo.main(["--steps", "0", "--output-dir", str(tmp_path / "d")])
    one_line(capsys, rc, "--steps 0: must be >= 1")
    rc = demo.main(["--lr", "-1", "--output-dir", str(tmp_path / "d")])
    one_line(capsys, rc, "--lr -1.0: must be > 0")
    assert not (tmp_path / "d").exists()


def test_convert_damaged_inputs(tmp_path, capsys):
    from mixedae.convert import main
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    rc = main([str(tmp_path / "bad.safetensors"), str(tmp_path / "o.safetensors")])
    one_line(capsys, rc, f"{tmp_path / 'bad.safetensors'}: not a readable safetensors file")
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 truncated zip")
    rc = main([str(tmp_path / "bad.pth"), str(tmp_path / "o.safetensors")])
    one_line(capsys, rc, f"{tmp_path / 'bad.pth'}: not a readable torch checkpoint")
    assert not list(tmp_path.glob("o*"))


# ---- fine-tuning and transfer --------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--lr", "-0.1"], "--lr -0.1: must be > 0"),
    (["--blr", "0"], "--blr 0.0: must be > 0"),
    (["--batch-size", "0"], "--batch-size 0: must be > 0"),
    (["--workers", "-2"], "--workers -2: must be >= 0"),
    (["--layer-decay", "1.5"], "--layer-decay 1.5: must be in (0, 1]"),
    (["--max-steps", "0"], "--max-steps 0: must be > 0"),
    (["--img-size", "30"], "--img-size 30 is not a multiple of the patch size 8"),
])
def test_finetune_bad_flags(tmp_path, capsys, no_model, args, needle):
    root = data_dir("cls_tiny") / "cifar10"
    rc = F.main(["--data", str(root), "--val-folder", "test", "--model", "micro",
                 "--patch-size", "8", "--img-size", "32", "--output-dir", str(tmp_path / "o"),
                 *args])
    one_line(capsys, rc, needle)
    assert not (tmp_path / "o").exists()


def test_finetune_damaged_checkpoint_is_named(tmp_path, capsys, no_model):
    root = data_dir("cls_tiny") / "cifar10"
    bad = tmp_path / "model.safetensors"
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(1000)}, str(good))
    bad.write_bytes(good.read_bytes()[:120])  # valid-looking header, data cut off
    rc = F.main(["--data", str(root), "--val-folder", "test", "--model", "micro",
                 "--patch-size", "8", "--img-size", "32", "--output-dir", str(tmp_path / "o"),
                 "--checkpoint", str(bad)])
    one_line(capsys, rc, str(bad))


@pytest.mark.parametrize("args,needle", [
    (["--iters", "0"], "--iters"),
    (["--workers", "-1"], "--workers -1: must be >= 0"),
    (["--momentum", "1.5"], "--momentum 1.5: must be in [0, 1)"),
    (["--stop-after", "0"], "--stop-after 0: must be > 0"),
])
def test_transfer_bad_flags(tmp_path, capsys, no_model, args, needle):
    rc = T.main(["--datasets", "cifar10", "--root", str(data_dir("cls_tiny")), "--model",
                 "micro", "--patch-size", "8", "--img-size", "32", "--output-dir",
                 str(tmp_path / "o"), *args])
    one_line(capsys, rc, needle)
    assert not (tmp_path / "o").exists()


def test_transfer_unwritable_output_dir(tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("x")
    rc = T.main(["--datasets", "cifar10", "--root", str(data_dir("cls_tiny")), "--model",
                 "micro", "--patch-size", "8", "--img-size", "32", "--output-dir",
                 str(tmp_path / "file" / "o")])
    one_line(capsys, rc, "is not a directory")


def test_dist_timeout_setting(monkeypatch):
    monkeypatch.delenv("MIXEDAE_DIST_TIMEOUT", raising=False)
    assert timeout_seconds() == 300
    monkeypatch.setenv("MIXEDAE_DIST_TIMEOUT", "12.5")
    assert timeout_seconds() == 12.5
    for bad in ("abc", "0", "-3", "inf"):
        monkeypatch.setenv("MIXEDAE_DIST_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="MIXEDAE_DIST_TIMEOUT"):
            timeout_seconds()


def test_finetune_resume_from_a_damaged_checkpoint(tmp_path, capsys):
    root = data_dir("cls_tiny") / "cifar10"
    bad = tmp_path / "old.pth"
    bad.write_bytes(b"PK\x03\x04 cut off")
    rc = F.main(["--data", str(root), "--val-folder", "test", "--model", "micro",
                 "--patch-size", "8", "--img-size", "32", "--output-dir", str(tmp_path / "o"),
                 "--resume", str(bad)])
    one_line(capsys, rc, f"{bad}: not a readable torch checkpoint")


# ---- issue 19: one error path; only the project's error classes are bad input --------------
def test_an_unexpected_exception_is_reported_as_a_bug(tmp_path, capsys, monkeypatch):
    """A ZeroDivisionError inside a command is a bug of this project, not bad input: one line
    saying so, exit code 1; with --debug the exception itself escapes (the traceback)."""
    from mixedae.pretrain import command as cmd

    def broken(args):
        raise ZeroDivisionError("division by zero in the config code")
    monkeypatch.setattr(cmd, "config_from_args", broken)
    data = synthetic_folder(tmp_path / "data", n=8)
    args = ["pretrain", *MICRO_ARGS, "--batch-size", "8", "--data", str(data), "--output-dir",
            str(tmp_path / "o")]
    err = one_line(capsys, cli.main(args), "internal error (a bug, please report): "
                   "ZeroDivisionError: division by zero in the config code; rerun with --debug",
                   code=1)
    assert err.startswith("mixedae pretrain: error: ")
    with pytest.raises(ZeroDivisionError):
        cli.main([*args, "--debug"])
    # the same for a command that had an error handler of its own (mixedae report)
    from mixedae.report import main as report_main
    monkeypatch.setattr(report_main, "check_args", broken)
    one_line(capsys, report_main.main([str(tmp_path)]), "mixedae report: error: internal error "
             "(a bug, please report): ZeroDivisionError", code=1)


def test_distributed_failures_are_recognised_by_type():
    """torch.distributed's own error types (NCCL watchdog: DistBackendError, the store:
    DistStoreError) and gloo's timed-out collective (torch 2.14: a plain RuntimeError with
    gloo's messages, measured on a 2-rank gloo group with a 3 s limit) are distributed
    failures; a RuntimeError that merely says "timed out" (or a subclass) is not."""
    import torch.distributed as dist
    from mixedae.runtime.cli import describe
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
                        "unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to "
                        "complete")
    for e in (gloo, RuntimeError("Application timeout caused pair closure"),
              dist.DistBackendError("watchdog caught collective operation timeout"),
              dist.DistStoreError("wait timeout after 10ms")):
        code, msg = describe(e)
        assert code == 1 and msg.startswith("a distributed collective failed or timed out"), e
    assert "unbound_buffer.cc" not in describe(gloo)[1]   # the C++ location is dropped

    class Sub(RuntimeError):
        pass
    for e in (RuntimeError("the collective timed out (gloo)"), Sub(str(gloo))):
        assert describe(e)[1].startswith("internal error (a bug, please report)"), e
