"""Multi-process runs without a GPU: tools/dist_train.sh and tools/dist_test.sh with 2 gloo
processes on ade_tiny (the distributed evaluation equals the single-process one), and the
Slurm scripts through a stand-in ``srun`` that starts the tasks the way Slurm would."""
import json
import os
import socket
import subprocess
import sys

import pytest

from mixedae.mm.smoke import tiny_seg_config

from mm_inproc import dump_config, run_tool
from conftest import REPO, data_dir

FAKE_SRUN = r"""#!/usr/bin/env bash
# stand-in for Slurm's srun: records its arguments, then starts --ntasks copies of the command
echo "$@" > "$SRUN_LOG"
n=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ntasks=*) n=${1#--ntasks=}; shift ;;
    -p) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_NODELIST=localhost "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_slurm_port() -> int:
    """A free port in the range Slurm jobs' ports are derived into (10000-29999)."""
    for port in range(20000 + os.getpid() % 5000, 30000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 20000-29999")


def sh(*args, env=None, timeout=400, base_env=None):
    e = dict(base_env or os.environ, PYTHON=sys.executable, **(env or {}))
    r = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                       env=e, timeout=timeout)
    return r, r.stdout + r.stderr


RECORD_SRUN = """#!/usr/bin/env bash
# stand-in for Slurm's srun that only records its arguments
echo "$@" > "$SRUN_LOG"
"""


@pytest.fixture(scope="module")
def seg_cfg(tmp_path_factory):
    return dump_config(tmp_path_factory, "seg", tiny_seg_config(data_dir("ade_tiny"), iters=2))


@pytest.fixture(scope="module")
def dist_run(seg_cfg, tmp_path_factory):
    """tools/dist_train.sh with 2 gloo processes; its log and work dir."""
    wd = tmp_path_factory.mktemp("dist_train") / "wd"
    r, log = sh("tools/dist_train.sh", seg_cfg, 2, "--work-dir", wd, "--from-scratch",
                env=dict(PORT=str(free_port())))
    assert r.returncode == 0, log[-5000:]
    return log, wd


@pytest.fixture(scope="module")
def single_metrics(seg_cfg, dist_run, tmp_path_factory):
    """tools/test.py in this process on the distributed run's checkpoint."""
    d = tmp_path_factory.mktemp("single")
    r = run_tool("tools/test.py", seg_cfg, dist_run[1] / "iter_2.pth", "--work-dir", d / "t1",
                 "--metrics-out", d / "m1.json")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return json.loads((d / "m1.json").read_text())


def test_dist_train_and_test_two_cpu_processes(seg_cfg, dist_run, single_metrics, tmp_path):
    log, wd = dist_run
    assert "Found no NVIDIA driver" not in log
    assert "Distributed training: True" in log and "GPU number: 2" in log
    assert "no CUDA: gloo process group" in log
    ckpt = wd / "iter_2.pth"
    assert ckpt.is_file()
    r, log = sh("tools/dist_test.sh", seg_cfg, ckpt, 2, "--work-dir", tmp_path / "t2",
                "--metrics-out", tmp_path / "m2.json", env=dict(PORT=str(free_port())))
    assert r.returncode == 0, log[-5000:]
    m2 = json.loads((tmp_path / "m2.json").read_text())
    print(f"ade_tiny, 2 gloo processes: {m2}; one process: {single_metrics}")
    assert m2 == single_metrics   # 11 images split over 2 ranks, gathered: the same numbers


def stand_in(tmp_path, script: str) -> dict:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "srun").write_text(script)
    (bindir / "srun").chmod(0o755)
    return dict(PATH=f"{bindir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / "srun.txt"))


def test_slurm_scripts_with_a_stand_in_srun(seg_cfg, dist_run, single_metrics, tmp_path):
    # slurm_train.sh: the srun command line it builds (both scripts launch through
    # tools/_launch.sh's launch_srun; the run itself is exercised by slurm_test.sh below)
    env = dict(stand_in(tmp_path, RECORD_SRUN), GPUS="16", GPUS_PER_NODE="8")
    r, log = sh("tools/slurm_train.sh", "debug", "job", seg_cfg, tmp_path / "wd",
                "--cfg-options", "train_cfg.max_iters=1", env=env)
    assert r.returncode == 0, log[-5000:]
    args = (tmp_path / "srun.txt").read_text().split()
    assert args[:8] == ["-p", "debug", "--job-name=job", "--gres=gpu:8", "--ntasks=16",
                        "--ntasks-per-node=8", "--cpus-per-task=5", "--kill-on-bad-exit=1"]
    assert args[8:11] == [sys.executable, "-u", str(REPO / "tools/train.py")]
    assert args[11:] == [str(seg_cfg), f"--work-dir={tmp_path / 'wd'}", "--launcher=slurm",
                         "--cfg-options", "train_cfg.max_iters=1"]
    # slurm_test.sh: a task started the way Slurm would, mmengine's slurm launcher, the same
    # metrics as tools/test.py (two processes gathering: dist_test.sh above)
    # no MASTER_PORT: the rendezvous port comes from the job id (10000 + SLURM_JOB_ID % 20000)
    job = 1234567 + (free_slurm_port() - 10000 - 1234567) % 20000
    port = 10000 + job % 20000
    env = dict(stand_in(tmp_path, FAKE_SRUN), GPUS="1", MASTER_ADDR="127.0.0.1",
               SLURM_JOB_ID=str(job))
    env_run = {k: v for k, v in os.environ.items() if k != "MASTER_PORT"}
    r, log = sh("tools/slurm_test.sh", "debug", "job", seg_cfg, dist_run[1] / "iter_2.pth",
                "--work-dir", tmp_path / "t", "--metrics-out", tmp_path / "m.json", env=env,
                base_env=env_run)
    assert r.returncode == 0, log[-5000:]
    assert f"slurm: MASTER_PORT={port}" in log
    assert "--launcher=slurm" in (tmp_path / "srun.txt").read_text().split()
    assert json.loads((tmp_path / "m.json").read_text()) == single_metrics


def test_slurm_master_port_from_the_job_id(monkeypatch):
    """Two jobs sharing a node get different rendezvous ports; the user's MASTER_PORT wins."""
    from mixedae.mm.distributed import slurm_master_port
    ports = []
    for job in ("4242", "4243", "24242"):
        monkeypatch.delenv("MASTER_PORT", raising=False)
        monkeypatch.setenv("SLURM_JOB_ID", job)
        ports.append(slurm_master_port())
        assert os.environ["MASTER_PORT"] == ports[-1]
    assert ports == ["14242", "14243", "14242"]   # 10000 + id % 20000
    monkeypatch.setenv("MASTER_PORT", "23456")
    assert slurm_master_port() == "23456"
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_master_port() == "29500"   # not a Slurm job: torch's default


def test_script_usage():
    for script, n in (("dist_train.sh", 2), ("dist_test.sh", 3), ("slurm_train.sh", 4),
                      ("slurm_test.sh", 4)):
        assert subprocess.run(["bash", "-n", f"tools/{script}"], cwd=REPO).returncode == 0
        r = subprocess.run(["bash", f"tools/{script}"], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2 and r.stderr.startswith("usage:"), script
