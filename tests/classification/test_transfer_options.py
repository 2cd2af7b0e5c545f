"""``mixedae transfer``: ``--seeds`` (the protocol once per seed, mean ± std per dataset;
issue 18), and runs made before ``--holdout`` / ``--voc-difficult`` compare as what they ran."""
import json

import numpy as np
import pytest

from mixedae.classification import transfer as T

from test_cls_reliability import MICRO, small_cifar

pytestmark = pytest.mark.usefixtures("single_thread")


def test_seeds_mean_and_std_table(tmp_path, capsys):
    small_cifar(tmp_path / "root", n_train=4, n_test=2)
    out = tmp_path / "o"
    run = ["--datasets", "cifar10", "--root", str(tmp_path / "root"), *MICRO, "--iters", "2",
           "--batch-size", "4", "--lrs", "0.01", "--workers", "0", "--no-progress",
           "--output-dir", str(out)]
    assert T.main([*run, "--seeds", "0,1"]) == 0
    scores = [json.loads((out / f"seed{s}" / "runs" / "cifar10" / "result.json").read_text())
              for s in (0, 1)]
    assert [r["settings"]["seed"] for r in scores] == [0, 1]
    v = [r["test_score"] for r in scores]
    md = (out / "results.md").read_text()
    assert f"| {np.mean(v):.1f} ± {np.std(v, ddof=1):.1f} |" in md
    assert (out / "seed0" / "results.md").is_file()
    line = (out / "results.csv").read_text().splitlines()[1].split(",")
    assert line[:2] == ["cifar10", "top1"] and float(line[2]) == pytest.approx(np.mean(v), 1e-4)
    capsys.readouterr()
    assert T.main([*run, "--seeds", "0,0"]) == 2
    assert "--seeds '0,0': give distinct integers" in capsys.readouterr().err
    assert T.main([*run, "--seeds", "1,2", "--seed", "3"]) == 2


def test_an_older_run_compares_as_what_it_ran(tmp_path, capsys):
    """A run recorded before --holdout / --voc-difficult existed ran a stratified hold-out and
    ignored difficult VOC objects: rerun under today's defaults it is refused naming the
    difference; with the old values it is reused."""
    small_cifar(tmp_path / "root", n_train=4, n_test=1)
    out = tmp_path / "o"
    run = ["--datasets", "cifar10", "--root", str(tmp_path / "root"), *MICRO, "--iters", "2",
           "--batch-size", "4", "--lrs", "0.01", "--workers", "0", "--no-progress",
           "--output-dir", str(out)]
    old = ["--holdout", "stratified", "--voc-difficult", "ignore"]
    assert T.main([*run, *old]) == 0
    ds = out / "runs" / "cifar10"
    for f in [ds / "result.json", *ds.glob("*/result.json")]:  # as the older code wrote them
        r = json.loads(f.read_text())
        for k in ("holdout", "voc_difficult"):
            r["settings"].pop(k)
        f.write_text(json.dumps(r))
    split = json.loads((ds / "split.json").read_text())
    split["kind"] = split["kind"].replace("stratified ", "")
    (ds / "split.json").write_text(json.dumps(split))
    capsys.readouterr()
    assert T.main(run) == 2
    err = capsys.readouterr().err
    assert "holdout: 'stratified' vs 'shuffled'" in err or "'stratified hold-out" in err
    assert T.main([*run, *old]) == 0
    assert "done before" in capsys.readouterr().out


def test_an_unfinished_run_resumes_only_under_its_settings(tmp_path, capsys):
    """Issue 17 item 1, audit of transfer: an interrupted run's checkpoint is never resumed
    under other settings (here --iters, which would silently change its schedule)."""
    small_cifar(tmp_path / "root", n_train=4, n_test=1)
    out = tmp_path / "o"
    run = ["--datasets", "cifar10", "--root", str(tmp_path / "root"), *MICRO, "--batch-size",
           "4", "--lrs", "0.01", "--workers", "0", "--no-progress", "--output-dir", str(out)]
    assert T.main([*run, "--iters", "6", "--stop-after", "2"]) == 0
    ck = out / "runs" / "cifar10" / "lr0.01" / "checkpoint.pth"
    good = ck.read_bytes()
    capsys.readouterr()
    assert T.main([*run, "--iters", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "iters: 6 vs 4" in err[0]
    assert ck.read_bytes() == good
    assert T.main([*run, "--iters", "6"]) == 0  # the same settings: resumed and finished
    res = json.loads((out / "runs" / "cifar10" / "lr0.01" / "result.json").read_text())
    assert res["resumed_from"] == 2
