"""tools/gpu_suite.sh at toy size on the CPU (``--device cpu --quick``): every part runs (the
Triton impls through the interpreter), the table and the dated JSONL are written, and nothing
fails. The GPU numbers themselves are taken on a GPU machine, never asserted here."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, data_dir


def test_gpu_suite_quick_cpu_path(tmp_path):
    pytest.importorskip("triton", reason="the suite's Triton impls need Triton")
    data = data_dir("imagenet_tiny")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu_suite.sh"), "--device", "cpu",
                           "--quick", "--out-dir", str(tmp_path), "--data", str(data),
                           "--impls", "sdpa,triton,fused"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "GPU SUITE: PASS" in proc.stdout
    (out,) = tmp_path.glob("*_quick_cpu.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    parts = {r["part"] for r in rows}
    assert parts == {"correctness", "loader", "dense", "pretrain_eager", "pretrain_compiled"}
    assert not [r for r in rows if r["ok"] is False]
    names = {r["name"] for r in rows}
    for impl in ("sdpa", "triton", "fused"):
        assert f"{impl} float32 cls=always_visible" in names
        assert any(r.get("impl") == impl and r["part"] == "pretrain_eager" and r["img_per_s"] > 0
                   for r in rows)
    assert "fused float32 cls=topk" in names
    loader = [r for r in rows if r["part"] == "loader" and "img_per_s" in r]
    assert len(loader) == 2 and all(r["img_per_s"] > 0 for r in loader)
    ratios = [r["ratio_to_mae"] for r in rows if r.get("ratio_to_mae")]
    assert len(ratios) == 3
