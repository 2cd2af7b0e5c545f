"""``mixedae experiment fig6`` at its seconds-long test scale on real images."""
import json

import pytest

from conftest import data_dir
from mixedae import cli
from mixedae.pretrain import experiment


def test_fig6_grid_writes_table_plots_and_reuses_finished_runs(tmp_path, caplog, single_thread):
    data = data_dir("imagenet_tiny")
    out = tmp_path / "fig6"
    argv = ["experiment", "fig6", "--scale", "test", "--data", str(data), "--output-dir",
            str(out), "--steps", "2", "--no-progress", "--cls-modes", "always_visible"]
    assert cli.main(argv + ["--seg-modes", "attention"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seg_embed_mode"], r["homo_cls"]) for r in rows] == [
        ("MixedAE", "attention", "always_visible"), ("HomoAtt-only", "attention", "always_visible")]
    for r in rows:
        cfg = json.loads((out / r["run"] / "config.json").read_text())
        assert (cfg["seg_embed_mode"], cfg["homo_cls"], cfg["homo_con"]) == (
            r["seg_embed_mode"], r["homo_cls"], r["method"] == "MixedAE")
        assert r["steps"] == 2 and len(r["topk_acc"]) == 3       # micro: 4 blocks, 1st global
        assert 0 <= r["probe_init"] <= 1 and 0 <= r["probe_end"] <= 1
        assert (r["homocon_ratio"] is None) == (r["method"] == "HomoAtt-only")
        assert r["homocon_ratio"] is None or r["homocon_ratio"] >= 1 - 1e-6
        assert not (out / r["run"] / "checkpoint.pth").exists()
    table = (out / "table.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| Mixed")
                or line.startswith("| HomoAtt")]) == 2
    for png in ("fig6a.png", "fig6b.png", "probe.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # a finished run is reused, not retrained
    log = out / rows[0]["run"] / "log.jsonl"
    before = log.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="mixedae.pretrain.experiment"):
        assert cli.main(argv + ["--methods", "MixedAE", "--seg-modes", "attention"]) == 0
    assert "reusing" in caplog.text and log.stat().st_mtime_ns == before
    assert len(json.loads((out / "results.json").read_text())) == 1
    # --report-only tabulates whatever of a grid has finished, training nothing
    assert cli.main(argv + ["--seg-modes", "attention,none", "--report-only"]) == 0
    assert len(json.loads((out / "results.json").read_text())) == 2
    assert not (out / "MixedAE_none_always_visible").exists()


def test_fig6_grid_spans_methods_segment_and_cls_modes():
    runs = experiment.grid(["MixedAE", "HomoAtt-only"], ["attention", "none"], ["topk"])
    assert [n for n, _ in runs] == ["MixedAE_attention_topk", "MixedAE_none_topk",
                                    "HomoAtt-only_attention_topk", "HomoAtt-only_none_topk"]
    assert runs[1][1] == dict(attention="topk", homo_con=True, seg_embed_mode="none",
                              homo_cls="topk")
    assert runs[2][1]["homo_con"] is False


@pytest.mark.parametrize("args,needle", [
    (["--seg-modes", "qk"], "--seg-modes 'qk'"),
    (["--cls-modes", "global"], "--cls-modes 'global'"),
    (["--methods", "MAE"], "--methods 'MAE'"),
    (["--steps", "0"], "--steps=0"),
    (["--data", "/nonexistent/images"], "/nonexistent/images"),
    (["--report-only"], "no finished run"),
])
def test_fig6_bad_flags_fail_before_work(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc = cli.main(["experiment", "fig6", "--scale", "test", "--output-dir", str(out)] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("mixedae experiment: error:") and needle in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_fig6_dry_run_prints_the_plan_with_time_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "fig6"
    assert experiment.main(["fig6", "--scale", "cpu", "--device", "cpu", "--dry-run",
                            "--output-dir", str(out), "--seg-modes", "residual,none"]) == 0
    text = capsys.readouterr().out
    assert "fig6 --scale cpu on cpu: 4 run(s) × 300 steps" in text
    assert "MixedAE_residual_always_visible" in text and "HomoAtt-only_none_always_visible" in text
    assert f"~{4 * 300 * 0.39 / 60:.0f} min" in text and "measured" in text
    assert not out.exists()
    assert experiment.main(["fig6", "--scale", "gpu", "--device", "cuda", "--dry-run",
                            "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 run(s) × 400 steps" in text and "estimate, not measured" in text
    assert experiment.main(["fig6", "--scale", "gpu", "--device", "cpu", "--dry-run",
                            "--output-dir", str(out)]) == 0
    assert "unknown (no measurement of the gpu scale on cpu)" in capsys.readouterr().out
