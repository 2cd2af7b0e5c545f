"""tools/gpu_suite.sh at toy size on the CPU (``--device cpu --quick``; the Triton impls through
the interpreter): the order by value, every row on disk before it is printed (so a kill at
any point loses nothing; a test kills it), the watchdog and the expected-time gate giving
INCOMPLETE with its own exit code, and ``--plan``. The GPU numbers themselves are taken on a
GPU machine, never asserted here."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, data_dir

EXIT_INCOMPLETE = 3
HEAD = ["preflight", "headline", "loader"]


def suite(tmp_path, *extra, out=None):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    if out:
        env["OUT"] = str(out)
    cmd = ["bash", str(REPO / "tools" / "gpu_suite.sh"), "--device", "cpu", "--quick",
           "--out-dir", str(tmp_path), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def jsonl(tmp_path):
    (out,) = tmp_path.glob("*_quick_cpu.jsonl")
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_gpu_suite_quick_cpu_path_in_order_every_row_on_disk_before_it_is_printed(tmp_path):
    pytest.importorskip("triton", reason="the suite's Triton impls need Triton")
    p = suite(tmp_path, "--data", str(data_dir("imagenet_tiny")), "--impls",
              "sdpa,triton,fused")
    printed = 0
    for line in p.stdout:
        if line.startswith("["):  # a row: it is in the JSONL already (a kill here loses none)
            printed += 1
            assert len(jsonl(tmp_path)) >= printed, line
        if line.startswith("part "):
            break
    rest = p.stdout.read()
    assert p.wait(timeout=600) == 0, rest[-3000:] + p.stderr.read()[-3000:]
    assert rest.strip().splitlines()[-1].startswith("GPU SUITE: PASS")
    rows = jsonl(tmp_path)
    parts = list(dict.fromkeys(r["part"] for r in rows))
    assert parts == HEAD + ["correctness", "eager", "presets", "dense", "suite"]
    assert not [r for r in rows if r["ok"] is False or r.get("skipped")]
    names = [r["name"] for r in rows]
    # headline: MAE, then each MixedAE impl right after its own correctness check
    head = [n for r, n in zip(rows, names) if r["part"] == "headline"]
    assert head[0].startswith("MAE eager")
    for impl in ("sdpa", "fused"):
        run = next(i for i, n in enumerate(head) if n.startswith(f"MixedAE {impl} eager"))
        assert head[run - 1].startswith(f"{impl} bfloat16") or \
            head[run - 1].startswith(f"kernel {impl}.")
    assert any(r.get("ratio_to_mae") for r in rows if r["name"].startswith("MixedAE fused"))
    kern = [r for r in rows if r["name"].startswith("kernel ")]
    assert {r["kernel"] for r in kern} == {"_select_kernel", "_fwd_kernel", "_bwd_dq_kernel",
                                          "_bwd_dkdv_kernel"}
    assert all({"n_regs", "n_spills", "BLOCK_M", "BLOCK_N", "num_warps"} <= set(r)
               for r in kern)
    bench = [r for r in rows if r.get("img_per_s") and "step_ms" in r and "preset" in r]
    assert len(bench) == 4 and all(r["gflop_per_step"] > 0 and r["tflop_per_s"] > 0 and
                                   "mfu" in r and "peak_mem_gib" in r for r in bench)
    loader = {r["path"]: r for r in rows if r["part"] == "loader" and "path" in r}
    assert list(loader) == ["cpu-pil", "cpu", "gpu"]
    assert all(r["img_per_s_per_core"] > 0 and r["decoder"] for r in loader.values())
    pre = {r["name"]: r for r in rows if r["part"] == "preflight"}
    assert pre["versions, no mm* import"]["mm_imported"] == []
    assert rows[-1]["name"] == "verdict" and rows[-1]["verdict"] == "PASS"


def test_gpu_suite_killed_mid_run_keeps_every_row_it_printed(tmp_path):
    (tmp_path / "OUT").mkdir()
    p = suite(tmp_path, "--impls", "sdpa", out=tmp_path / "OUT")
    printed = []
    for line in p.stdout:
        if line.startswith("["):
            printed.append(line)
        if len(printed) == 6:  # inside the headline
            os.kill(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    rows = jsonl(tmp_path)
    assert len(rows) >= 6 and [r["part"] for r in rows[:4]] == ["preflight"] * 4
    assert rows[5]["part"] == "headline"
    assert jsonl(tmp_path / "OUT")[:6] == rows[:6]  # the copy in $OUT, row by row too


def test_gpu_suite_incomplete_when_the_budget_is_forced_small(tmp_path):
    # the watchdog: pieces allowed to start (tiny expectations) are cut at the limit
    pytest.importorskip("triton", reason="the fused check (a child process) needs Triton")
    p = suite(tmp_path / "dog", "--impls", "sdpa,fused", "--limit-s", "9", "--expect-scale",
              "0.001")  # the fused check alone takes longer than the whole limit
    out, err = p.communicate(timeout=60)
    assert p.returncode == EXIT_INCOMPLETE, out[-2000:] + err[-2000:]
    assert out.strip().splitlines()[-1].startswith("GPU SUITE: INCOMPLETE (")
    rows = jsonl(tmp_path / "dog")
    assert [r["name"] for r in rows[-2:]] == ["not reached", "verdict"]
    assert "watchdog" in rows[-2]["summary"] and "dense backbone fp32 vs bf16" in \
        rows[-2]["not_reached"]
    assert rows[-1]["verdict"] == "INCOMPLETE" and rows[-1]["exit_code"] == EXIT_INCOMPLETE
    # the gate: a piece whose expected time is not left is skipped, named, and counted
    p = suite(tmp_path / "gate", "--impls", "sdpa", "--parts", "preflight,headline",
              "--limit-s", "20", "--expect-scale", "4")
    out, err = p.communicate(timeout=60)
    assert p.returncode == EXIT_INCOMPLETE, out[-2000:] + err[-2000:]
    rows = jsonl(tmp_path / "gate")
    skipped = [r["name"] for r in rows if r.get("skipped")]
    assert skipped and all(n in out.strip().splitlines()[-1] for n in skipped)
    assert all("left before --limit-s" in r["summary"] for r in rows if r.get("skipped"))


def test_gpu_suite_plan_lists_the_pieces_with_expected_seconds_and_runs_nothing(tmp_path):
    p = suite(tmp_path, "--plan", "--impls", "sdpa,fused,flex")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-2000:]
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ") and " s   (by" in ln]
    parts = list(dict.fromkeys(ln[0] for ln in lines))
    assert parts[:3] == HEAD and parts[-1] == "dense"
    assert all(float(ln[-5]) > 0 for ln in lines)  # expected seconds of each piece
    assert " ".join(lines[4][1:3]) == "MAE eager"
    assert not list(tmp_path.glob("*.jsonl"))
    # what this CPU cannot run at all is named, not planned (on CUDA it would be a skip)
    assert "not planned on this device: MixedAE flex eager (FlexAttention has no backward" in out


def test_a_crashing_child_check_keeps_its_rows_and_fails_without_stopping_the_suite(
        tmp_path, monkeypatch):
    """A Triton check that dies (as an illegal address would) in its child process: the rows
    it made are kept, the crash is a FAIL row naming the exit status, the suite goes on."""
    import argparse
    sys.path.insert(0, str(REPO / "tools"))
    import gpu_suite
    row = json.dumps(dict(name="fused float32 cls=always_visible", summary="max err 0",
                          ok=True, impl="fused"))
    monkeypatch.setattr(gpu_suite, "child_cmd", lambda a, impl: [
        sys.executable, "-c", f"print('ROW ' + {row!r}, flush=True); import os; os.abort()"])
    args = argparse.Namespace(device="cpu", quick=True, out_dir=str(tmp_path), limit_s=60.0,
                              grace_s=2.0)
    s = gpu_suite.Suite(args)
    s.checked, s.mae = {}, {}
    gpu_suite.run_child(s, "headline", "fused")
    s.add("headline", "next piece", "still running")
    assert [r["name"] for r in s.rows] == ["fused float32 cls=always_visible",
                                           "check fused child process", "next piece"]
    assert s.rows[1]["ok"] is False and s.rows[1]["rc"] != 0
    assert s.finish([], "") == 1  # FAIL
    assert [r["name"] for r in jsonl(tmp_path)][:3] == [r["name"] for r in s.rows[:3]]
