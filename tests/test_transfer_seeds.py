"""``mixedae transfer --seeds``: the protocol once per seed, mean ± std per dataset (issue 18)."""
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
