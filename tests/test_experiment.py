"""``mixedae experiment fig6`` at its seconds-long test scale on real images."""
import json

import pytest

from conftest import data_dir
from mixedae import cli


def test_fig6_grid_writes_table_plots_and_reuses_finished_runs(tmp_path, caplog, single_thread):
    data = data_dir("imagenet_tiny")
    out = tmp_path / "fig6"
    argv = ["experiment", "fig6", "--scale", "test", "--data", str(data), "--output-dir",
            str(out), "--steps", "2", "--no-progress", "--cls-modes", "always_visible,topk"]
    assert cli.main(argv + ["--seg-modes", "attention"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seg_embed_mode"], r["homo_cls"]) for r in rows] == [
        (m, "attention", c) for m in ("MixedAE", "HomoAtt-only")
        for c in ("always_visible", "topk")]
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
                or line.startswith("| HomoAtt")]) == 4
    for png in ("fig6a.png", "fig6b.png", "probe.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # a finished run is reused, not retrained
    log = out / rows[0]["run"] / "log.jsonl"
    before = log.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="mixedae.pretrain.experiment"):
        assert cli.main(argv + ["--methods", "MixedAE", "--seg-modes", "attention"]) == 0
    assert "reusing" in caplog.text
    assert log.stat().st_mtime_ns == before
    assert len(json.loads((out / "results.json").read_text())) == 2


@pytest.mark.parametrize("args,needle", [
    (["--seg-modes", "qk"], "--seg-modes 'qk'"),
    (["--cls-modes", "global"], "--cls-modes 'global'"),
    (["--methods", "MAE"], "--methods 'MAE'"),
    (["--steps", "0"], "--steps=0"),
    (["--data", "/nonexistent/images"], "/nonexistent/images"),
])
def test_fig6_bad_flags_fail_before_work(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    rc = cli.main(["experiment", "fig6", "--scale", "test", "--output-dir", str(out)] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and needle in err and len(err.splitlines()) == 1
    assert not out.exists()
