"""Issue 10, pretraining and runtime: nothing poisoned (non-finite steps never reach a
checkpoint), nothing left behind (kills during a checkpoint write: atomic pairs, stale temp
files removed, umask modes), full disks named, a hung rank ends the job."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixedae.model import mixed_autoencoder as mae_module
from mixedae.pretrain import command, engine
from mixedae.runtime import checkpoint as ckpt
from mixedae.runtime import weights as W
from mixedae.runtime.atomic import atomic_torch_save, atomic_write_text, remove_stale_temps
from mixedae.runtime.torch_files import read_safetensors, stored_step

from conftest import REPO
from test_train import MICRO_ARGS, synthetic_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def args_for(data, out, *extra):
    return MICRO_ARGS + ["--batch-size", "8", "--epochs", "3", "--warmup-epochs", "1",
                         "--data", str(data), "--output-dir", str(out), "--device", "cpu",
                         "--num-workers", "0", "--log-every", "1", "--no-progress", "--resume",
                         "auto", *map(str, extra)]


def poison_gradients(monkeypatch, bad_steps: set[int]):
    """The engine's model gets NaN gradients (loss stays finite) on the given 1-based steps."""
    real = mae_module.MixedAutoencoder

    def build(cfg):
        model = real(cfg)
        calls = {"n": 0}

        def hook(grad):
            calls["n"] += 1
            return grad * float("nan") if calls["n"] in bad_steps else grad
        model.encoder.patch_embed.proj.weight.register_hook(hook)
        return model
    monkeypatch.setattr(engine, "MixedAutoencoder", build)


def all_finite(sd) -> bool:
    return all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


# ---- 1. a poisoned step never reaches a checkpoint --------------------------------------------
def test_nan_gradient_stops_and_keeps_the_good_checkpoint(tmp_path, capsys, monkeypatch):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    poison_gradients(monkeypatch, {6})  # 3 steps/epoch; checkpoints at 4 and 8
    rc = command.main(args_for(data, out, "--save-every", "4", "--max-steps", "8"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert "non-finite gradients" in err[0] and "at step 6" in err[0]
    assert f"last good checkpoint: step 4 in {out / 'checkpoint.pth'}" in err[0]
    state = ckpt.load_checkpoint(out / "checkpoint.pth")
    assert state["step"] == 4 and all_finite(state["model"])
    weights, meta = read_safetensors(out / "model.safetensors")
    assert meta["step"] == "4" and all_finite(weights)
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == \
        [1, 2, 3, 4, 5]  # the bad step 6 was never applied nor logged


def test_bad_steps_are_skipped_and_counted_up_to_the_limit(tmp_path, capsys, monkeypatch):
    data = synthetic_folder(tmp_path / "data", n=24)
    poison_gradients(monkeypatch, {3, 6})
    out = tmp_path / "skip"
    assert command.main(args_for(data, out, "--max-steps", "8", "--max-bad-steps", "2")) == 0
    state = ckpt.load_checkpoint(out / "checkpoint.pth")
    assert state["step"] == 8 and state["bad_steps"] == 2 and all_finite(state["model"])
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["bad_steps"] for r in log] == [0, 0, 1, 1, 1, 2, 2, 2]
    poison_gradients(monkeypatch, {3, 6})
    rc = command.main(args_for(data, tmp_path / "stop", "--max-steps", "8",
                               "--max-bad-steps", "1"))
    err = capsys.readouterr().err
    assert rc == 1 and "at step 6" in err and "bad steps so far: 2, allowed 1" in err


# ---- 2. kills during checkpoint writes: atomic pair, stale temps removed, umask -------------
KILLER = """
import os, signal, sys, torch
from mixedae.runtime.torch_files import stored_step
mode, step = sys.argv[1], int(sys.argv[2])
real_replace, real_save = os.replace, torch.save
def replace(a, b):  # SIGKILL between the renames of checkpoint.pth and model.safetensors
    if mode == "between" and str(b).endswith("model.safetensors") and stored_step(a) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(a, b)
def save(obj, f, *a, **k):  # SIGKILL half-way through writing checkpoint.pth
    if mode == "during" and isinstance(obj, dict) and obj.get("step") == step:
        f.write(b"PK" + b"x" * 100000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f, *a, **k)
os.replace, torch.save = replace, save
from mixedae.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killed(tmp_path, mode, step, argv):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    return subprocess.run([sys.executable, str(script), mode, str(step), "pretrain", *argv],
                          env=ENV, capture_output=True, text=True, timeout=300)


def temps(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("mode", ["between", "during"])
def test_kill_during_checkpoint_write(tmp_path, mode):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    argv = args_for(data, out, "--save-every", "4", "--max-steps", "8")
    r = run_killed(tmp_path, mode, 8, argv)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert temps(out), "the kill must leave a temp file behind (else it missed the write)"
    steps = stored_step(out / "checkpoint.pth"), stored_step(out / "model.safetensors")
    assert steps == ((8, 4) if mode == "between" else (4, 4))
    # a reader of the run directory takes the newer, complete file
    chosen = W.resolve_checkpoint_path(out)
    assert stored_step(chosen) == steps[0] and all_finite(W.read_weights(out)[0])
    # resume: temps removed, the pair made consistent again, the run finished
    r = subprocess.run([sys.executable, "-m", "mixedae.cli", "pretrain", *argv], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert temps(out) == [] and "left by an interrupted write" in r.stderr
    assert stored_step(out / "checkpoint.pth") == stored_step(out / "model.safetensors") == 8
    a = ckpt.load_checkpoint(out / "checkpoint.pth")["model"]
    b = read_safetensors(out / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reader_prefers_the_newer_file_of_a_torn_pair(tmp_path):
    from test_checkpoint import MICRO, save
    from mixedae.pretrain.config import get_preset
    cfg = get_preset("mixedae_tiny", **MICRO)
    model = mae_module.MixedAutoencoder(cfg.model_config())
    ckpt.save_safetensors(tmp_path / "model.safetensors", model, cfg, step=4)
    save(tmp_path / "checkpoint.pth", model, cfg, step=4)
    assert W.resolve_checkpoint_path(tmp_path).name == "model.safetensors"  # same step
    save(tmp_path / "checkpoint.pth", model, cfg, step=8)
    assert W.resolve_checkpoint_path(tmp_path).name == "checkpoint.pth"


class _Cfg:
    def to_json(self):
        return "{}"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    from mixedae.convert import convert
    old = os.umask(umask)
    try:
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "checkpoint.pth")
        atomic_write_text(tmp_path / "result.json", "{}")
        ckpt.save_safetensors(tmp_path / "model.safetensors", torch.nn.Linear(2, 2), _Cfg(), 1)
        from mixedae.model.vit import create_vit
        vit = create_vit("micro", img_size=32, patch_size=8)
        atomic_torch_save(vit.state_dict(), tmp_path / "vit.pth")
        convert(tmp_path / "vit.pth", tmp_path / "conv", "mm", log=lambda *a: None)
    finally:
        os.umask(old)
    for name in ("checkpoint.pth", "result.json", "model.safetensors", "conv.safetensors",
                 "conv.pth"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# a kill in the middle of a safetensors write (SIGXFSZ: the write crosses RLIMIT_FSIZE)
KILLED_ST_WRITE = """
import resource, signal, sys, torch
from mixedae.runtime import checkpoint as ckpt
class Cfg:
    def to_json(self):
        return "{}"
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # python ignores it; the kernel then kills
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
ckpt.save_safetensors(sys.argv[1], torch.nn.Linear(512, 512), Cfg(), 1)
"""


def test_kill_during_safetensors_write_leaves_only_removable_temps(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes").write_text("a user's file")
    r = subprocess.run([sys.executable, "-c", KILLED_ST_WRITE, str(out / "model.safetensors")],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGXFSZ, r.stderr[-2000:]
    left = sorted(p.name for p in out.iterdir() if p.name != ".notes")
    assert left and not (out / "model.safetensors").exists(), left  # killed mid-write
    # a named cleanup (convert's output folder) never takes a nameless temp of someone else
    foreign = out / ".tmpAbC123"
    foreign.write_bytes(b"x")
    remove_stale_temps(out, {"other.safetensors"})
    assert foreign.exists()
    # the next start of a run in this directory removes every temp of the killed write
    gone = remove_stale_temps(out)
    assert sorted(p.name for p in out.iterdir()) == [".notes"], gone


# ---- 5. a full disk is named ---------------------------------------------------------------
def test_file_size_limit_is_one_line_naming_the_file(tmp_path):
    """A real failing write (RLIMIT_FSIZE: EFBIG) while saving the checkpoint."""
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
            "from mixedae.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "pretrain",
                        *args_for(data, out, "--max-steps", "1")], env=ENV,
                       capture_output=True, text=True, timeout=300)
    err = [x for x in r.stderr.splitlines() if "error" in x]
    assert r.returncode == 1 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "File too large (EFBIG)" in err[0] and str(out / "checkpoint.pth") in err[0], err
    assert temps(out) == [] and not (out / "checkpoint.pth").exists()


def test_full_disk_is_named_enospc(tmp_path):
    """A real full file system (a 1 MiB tmpfs; needs root / mount rights, skipped otherwise)."""
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "disk"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root)")
    try:
        r = subprocess.run([sys.executable, "-m", "mixedae.cli", "pretrain",
                            *args_for(data, out, "--max-steps", "1")], env=ENV,
                           capture_output=True, text=True, timeout=300)
        err = [x for x in r.stderr.splitlines() if "error" in x]
        assert r.returncode == 1 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "ENOSPC" in err[0] and str(out / "checkpoint.pth") in err[0], err
        assert temps(out) == []
    finally:
        subprocess.run(["umount", str(out)], check=False)


# ---- 5. a torn last line of log.jsonl does not block resume -------------------------------
def test_torn_log_line_does_not_block_resume(tmp_path):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    assert command.main(args_for(data, out, "--max-steps", "2")) == 0
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # a kill during the next log write
    assert command.main(args_for(data, out, "--max-steps", "4")) == 0
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == \
        [1, 2, 3, 4]


# ---- 7. a hung rank ends the job ----------------------------------------------------------
HANG = """
import os, sys, time
from mixedae.pretrain import engine
if os.environ["RANK"] == "1":
    engine.train_step = lambda *a, **k: time.sleep(3600)   # this rank hangs
from mixedae.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_hung_rank_times_out_with_one_line(tmp_path):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**ENV, "MIXEDAE_DIST_TIMEOUT": "10", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(script), "pretrain",
                                       *args_for(data, out, "--max-steps", "2")],
                                      env=env, stderr=subprocess.PIPE, text=True))
    try:
        _, err = procs[0].communicate(timeout=240)
        t_done = time.time()
        assert procs[1].poll() is None  # rank 1 still hangs: rank 0 gave up on its own
    finally:
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
    lines = [x for x in err.splitlines() if x.startswith("mixedae pretrain: error")]
    assert procs[0].returncode == 1 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "rank 0/2" in lines[0] and "timed out" in lines[0] and "limit 10s" in lines[0]
    assert "MIXEDAE_DIST_TIMEOUT" in lines[0] and t_done


FROZEN = """
import os, signal, sys, time
import torch
import torch.distributed as dist
from mixedae.runtime.cli import run_main
from mixedae.runtime.distributed import init_distributed


def body(argv):
    init_distributed("cpu")
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen: SIGTERM cannot end it, only SIGKILL
    print(f"waiting since {time.time():.3f}", file=sys.stderr, flush=True)
    dist.all_reduce(torch.ones(1))


sys.exit(run_main("frozen", body))
"""


def test_frozen_rank_ends_the_job_at_the_limit_plus_seconds(tmp_path):
    """tools/_launch.sh's torchrun with 2 gloo ranks, one SIGSTOPped, a 3 s limit: the job is
    over a few seconds after the limit: rank 0 ends the stopped rank, which torchrun would
    SIGKILL only 30 s after its SIGTERM (the SIGTERM cannot end a stopped process)."""
    script = tmp_path / "frozen.py"
    script.write_text(FROZEN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tool = os.path.relpath(script, REPO / "tools")
    env = {**ENV, "MIXEDAE_DIST_TIMEOUT": "3", "PORT": str(port)}
    env.pop("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", None)
    p = subprocess.Popen(["bash", "-c", f'source tools/_launch.sh; launch_torchrun 2 "{tool}"'],
                         cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=120)
        t_end = time.time()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    waiting = [float(x.split()[-1]) for x in err.splitlines() if x.startswith("waiting since")]
    lines = [x for x in err.splitlines() if x.startswith("frozen: error")]
    assert p.returncode == 1 and len(waiting) == 1, err[-3000:]
    assert len(lines) == 1 and "rank 0/2" in lines[0] and "limit 3s" in lines[0], err[-3000:]
    assert "ended the stopped rank(s) 1 on this host (SIGKILL)" in lines[0], lines[0]
    assert t_end - waiting[0] < 3 + 9, (t_end - waiting[0], err[-3000:])
    assert "exitcode  : 1 " in err and "exitcode  : -9" in err  # rank 0's code; rank 1 killed
