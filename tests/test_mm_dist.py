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


def sh(*args, env=None, timeout=400):
    e = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    r = subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                       env=e, timeout=timeout)
    return r, r.stdout + r.stderr


@pytest.fixture(scope="module")
def seg_cfg(tmp_path_factory):
    ade = data_dir("ade_tiny")
    d = tmp_path_factory.mktemp("dist")
    cfg = tiny_seg_config(ade, iters=2)
    cfg.dump(str(d / "seg.py"))
    return d / "seg.py"


def test_dist_train_and_test_two_cpu_processes(seg_cfg, tmp_path):
    wd = tmp_path / "wd"
    r, log = sh("tools/dist_train.sh", seg_cfg, 2, "--work-dir", wd,
                env=dict(PORT=str(free_port())))
    assert r.returncode == 0, log[-5000:]
    assert "Found no NVIDIA driver" not in log
    assert "Distributed training: True" in log and "GPU number: 2" in log
    assert "no CUDA: gloo process group" in log
    ckpt = wd / "iter_2.pth"
    assert ckpt.is_file()
    r, log = sh("tools/dist_test.sh", seg_cfg, ckpt, 2, "--work-dir", tmp_path / "t2",
                "--metrics-out", tmp_path / "m2.json", env=dict(PORT=str(free_port())))
    assert r.returncode == 0, log[-5000:]
    r1 = subprocess.run([sys.executable, "tools/test.py", str(seg_cfg), str(ckpt), "--work-dir",
                         str(tmp_path / "t1"), "--metrics-out", str(tmp_path / "m1.json")],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r1.returncode == 0, (r1.stdout + r1.stderr)[-3000:]
    m1, m2 = (json.loads((tmp_path / f).read_text()) for f in ("m1.json", "m2.json"))
    print(f"ade_tiny, 2 gloo processes: {m2}; one process: {m1}")
    assert m1 == m2   # 11 images split over 2 ranks, gathered: the same numbers


def test_slurm_scripts_with_a_stand_in_srun(seg_cfg, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text(FAKE_SRUN)
    (bindir / "srun").chmod(0o755)
    env = dict(PATH=f"{bindir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / "srun.txt"),
               GPUS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    r, log = sh("tools/slurm_train.sh", "debug", "job", seg_cfg, tmp_path / "wd",
                "--cfg-options", "train_cfg.max_iters=1", env=env)
    assert r.returncode == 0, log[-5000:]
    args = (tmp_path / "srun.txt").read_text().split()
    assert args[:7] == ["-p", "debug", "--job-name=job", "--gres=gpu:2", "--ntasks=2",
                        "--ntasks-per-node=2", "--cpus-per-task=5"]
    assert "--launcher=slurm" in args and f"--work-dir={tmp_path / 'wd'}" in args
    assert "Distributed launcher: slurm" in log and "GPU number: 2" in log
    env.update(GPUS="1", MASTER_PORT=str(free_port()))
    r, log = sh("tools/slurm_test.sh", "debug", "job", seg_cfg, tmp_path / "wd/iter_1.pth",
                "--metrics-out", tmp_path / "m.json", env=env)
    assert r.returncode == 0, log[-5000:]
    assert "mIoU" in json.loads((tmp_path / "m.json").read_text())


def test_script_usage():
    for script, n in (("dist_train.sh", 2), ("dist_test.sh", 3), ("slurm_train.sh", 4),
                      ("slurm_test.sh", 4)):
        assert subprocess.run(["bash", "-n", f"tools/{script}"], cwd=REPO).returncode == 0
        r = subprocess.run(["bash", f"tools/{script}"], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 2 and r.stderr.startswith("usage:"), script
