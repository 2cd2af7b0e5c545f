"""Issue 10, fine-tuning and transfer: exact resume with worker processes (items 3), the best
score kept across a resume, unreadable images skipped and named, all-bad data refused before
a model is built (item 4), a NaN step never applied (item 1)."""
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from mixedae.classification import datasets as D
from mixedae.classification import engine as E
from mixedae.classification import finetune as F
from mixedae.classification import transfer as T
from mixedae.runtime.errors import TrainingDiverged
from mixedae.classification.dataset_readers import load_dataset

from conftest import data_dir

pytestmark = pytest.mark.usefixtures("single_thread")
MICRO = ["--model", "micro", "--patch-size", "8", "--img-size", "32", "--log-every", "1"]


def small_cifar(root: Path, n_train=8, n_test=2) -> Path:
    """cls_tiny/cifar10 cut to n_train / n_test images per class (symlinks)."""
    src = data_dir("cls_tiny") / "cifar10"
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            d = root / "cifar10" / split / cls.name
            d.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (d / f.name).symlink_to(f)
    return root / "cifar10"


def damage(folder: Path) -> list[Path]:
    """One truncated JPEG and one garbage file in the first class of ``folder``."""
    cls = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    good = sorted(cls.iterdir())[0].read_bytes()
    bad = [cls / "zz_truncated.jpg", cls / "zz_garbage.jpg"]
    bad[0].write_bytes(good[: len(good) // 3])
    bad[1].write_bytes(b"\xff\xd8\xff\xe0 not an image")
    return bad


def events(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("event") == kind]


# ---- 3. exact resume with worker processes --------------------------------------------------
def test_finetune_resume_is_exact_with_workers_and_keeps_best(tmp_path):
    data = small_cifar(tmp_path / "root")  # 80 train / 20 test; 16 per step: 5 steps/epoch
    base = ["--data", str(data), "--val-folder", "test", *MICRO, "--batch-size", "16",
            "--epochs", "2", "--warmup-epochs", "1", "--workers", "2", "--eval-batch-size", "20"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert F.main([*base, "--output-dir", str(a), "--max-steps", "7"]) == 0
    ck = E.load_checkpoint(a / "checkpoint.pth")
    first = events(a / "log.jsonl", "eval")[0]
    assert ck["step"] == 7 and first["step"] == 5
    assert ck["state"]["top1"] == first["top1"]  # the best score so far is in the checkpoint
    assert F.main([*base, "--output-dir", str(a), "--resume", "auto"]) == 0
    assert F.main([*base, "--output-dir", str(b)]) == 0
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["resumed_from"] == 7 and ra["step"] == rb["step"] == 10
    assert ra["best_top1"] == rb["best_top1"] == max(
        e["top1"] for e in events(b / "log.jsonl", "eval"))
    assert [e["top1"] for e in events(a / "log.jsonl", "eval")[-2:]] == \
        [e["top1"] for e in events(b / "log.jsonl", "eval")]
    ma, mb = (E.load_checkpoint(d / "checkpoint.pth")["model"] for d in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_transfer_resume_is_exact_with_workers(tmp_path):
    small_cifar(tmp_path / "root")
    base = ["--datasets", "cifar10", "--root", str(tmp_path / "root"), "--iters", "12",
            "--batch-size", "16", "--lrs", "0.01", "--ckpt-every", "4", "--workers", "2",
            "--val-frac", "0.25", *MICRO]
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.main([*base, "--output-dir", str(a), "--stop-after", "6"]) == 0
    run = a / "runs" / "cifar10" / "lr0.01"
    assert E.load_checkpoint(run / "checkpoint.pth")["step"] == 6
    assert T.main([*base, "--output-dir", str(a), "--keep-checkpoints"]) == 0
    assert T.main([*base, "--output-dir", str(b), "--keep-checkpoints"]) == 0
    for phase in ("lr0.01", "final"):
        ra, rb = (json.loads((d / "runs" / "cifar10" / phase / "result.json").read_text())
                  for d in (a, b))
        assert ra["eval"] == rb["eval"], phase
    assert json.loads((run / "result.json").read_text())["resumed_from"] == 6
    ma, mb = (E.load_checkpoint(d / "runs" / "cifar10" / "lr0.01" / "checkpoint.pth")["model"]
              for d in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


# ---- 4. unreadable images ---------------------------------------------------------------------
def test_finetune_skips_bad_training_images_and_never_alters_the_val_set(tmp_path, caplog,
                                                                          capsys):
    """Issue 16 §4: a training image is replaced and named; the evaluation folder is refused,
    naming every unreadable file and the count, or evaluated without them on request (the
    count in result.json) -- never with another image in their place."""
    data = small_cifar(tmp_path / "root", n_train=2, n_test=1)
    bad_train, bad_test = damage(data / "train"), damage(data / "test")
    run = ["--data", str(data), "--val-folder", "test", *MICRO, "--batch-size", "8",
           "--workers", "0", "--max-steps", "3"]
    assert F.main([*run, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 12 evaluation images cannot be read" in err[0]
    assert all(str(f) in err[0] for f in bad_test) and "--skip-unreadable-eval" in err[0]
    assert not (tmp_path / "o").exists()
    caplog.clear()
    assert F.main([*run, "--output-dir", str(tmp_path / "o"), "--skip-unreadable-eval"]) == 0
    msgs = " ".join(r.getMessage() for r in caplog.records)
    for f in bad_train:
        assert f"unreadable image {f}" in msgs, f
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert res["step"] == 3 and res["val_skipped"] == 2
    assert sorted(res["val_skipped_files"]) == sorted(map(str, bad_test))
    ev = events(tmp_path / "o" / "log.jsonl", "start")[0]
    assert ev["n_val"] == 10  # the 10 readable ones, none twice


def test_transfer_eval_sets_never_altered(tmp_path, capsys):
    """The test split and the lr-search validation part: refused naming the files, or
    evaluated without them (count in result.json, named in results.md)."""
    data = small_cifar(tmp_path / "root", n_train=5, n_test=1)
    bad = damage(data / "test")
    run = ["--datasets", "cifar10", "--root", str(tmp_path / "root"), *MICRO, "--iters", "2",
           "--batch-size", "4", "--lrs", "0.01", "--workers", "0", "--no-progress"]
    assert T.main([*run, "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar10/test: 2 of 12 evaluation images" in err[0]
    assert all(str(f) in err[0] for f in bad)
    assert T.main([*run, "--output-dir", str(tmp_path / "a"), "--skip-unreadable-eval"]) == 0
    res = json.loads((tmp_path / "a" / "runs" / "cifar10" / "result.json").read_text())
    assert res["eval_skipped"] == {"test": 2} and res["test_eval"]["n"] == 10
    assert "2 unreadable evaluation images left out" in (tmp_path / "a" / "results.md").read_text()
    # an unreadable image that the hold-out puts into the lr-search validation part
    for f in bad:
        f.unlink()
    split = json.loads((tmp_path / "a" / "runs" / "cifar10" / "split.json").read_text())
    victim = Path(split["val_images"][0])
    victim.unlink()
    victim.write_bytes(b"garbage")
    assert T.main([*run, "--output-dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cifar10/val: 1 of {len(split['val'])}" in err[0]
    assert str(victim) in err[0]


def test_image_list_skips_bad_files_with_their_targets(tmp_path, caplog):
    data = small_cifar(tmp_path / "root", n_train=1, n_test=1)
    bad = damage(data / "train")
    cd = load_dataset("cifar10", tmp_path / "root")
    ds = cd.dataset("train", D.eval_transform(32))
    i = cd.train_images.index(str(bad[0]))
    x, y = ds[i]  # replaced by the next readable example, with that example's label
    j = next(k for k in range(i + 1, len(ds)) if cd.train_images[k] not in map(str, bad))
    assert torch.equal(x, ds[j][0]) and y == cd.train_targets[j]
    for _ in range(2):
        ds[i]
    assert sum(str(bad[0]) in r.getMessage() for r in caplog.records) == 1  # named once


def test_all_unreadable_data_refused_before_a_model(tmp_path, capsys, monkeypatch):
    data = small_cifar(tmp_path / "root", n_train=1, n_test=1)
    for f in data.rglob("*.jpg"):
        f.unlink()
        f.write_bytes(b"not an image")

    def refuse(*a, **k):
        raise AssertionError("a model was built")
    monkeypatch.setattr(F, "create_vit", refuse)
    from mixedae.classification import transfer_protocol
    monkeypatch.setattr(transfer_protocol, "create_vit", refuse)
    rc = F.main(["--data", str(data), "--val-folder", "test", *MICRO, "--output-dir",
                 str(tmp_path / "ft")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and f"image folder {data / 'train'}: none of the 10 images" in err[-1]
    rc = T.main(["--datasets", "cifar10", "--root", str(tmp_path / "root"), *MICRO,
                 "--output-dir", str(tmp_path / "tr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "cifar10/train: none of the 10 images can be read" in err[-1]
    assert "Traceback" not in "".join(err)


# ---- 1. a NaN step is never applied -----------------------------------------------------------
def test_train_loop_stops_on_nan_and_keeps_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    calls = {"n": 0}

    def loss_fn(out, y):  # finite until the 7th step, then a NaN loss
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] == 7 else loss
    kw = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_set=ds,
              loss_fn=loss_fn, batch_size=4, total_steps=16, lr_at=lambda s: 0.1,
              device=torch.device("cpu"), ckpt_path=tmp_path / "checkpoint.pth", ckpt_every=4,
              amp=False)
    with pytest.raises(TrainingDiverged, match=r"at step 7; .*last good checkpoint: step 4"):
        E.train_loop(**kw)
    ck = E.load_checkpoint(tmp_path / "checkpoint.pth")
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # step 7 not applied
    calls["n"] = 0
    out = E.train_loop(**{**kw, "ckpt_path": tmp_path / "skip.pth"}, max_bad_steps=1)
    assert out["finished"] and all(torch.isfinite(p).all() for p in model.parameters())


def test_transfer_grid_records_a_diverging_lr_and_goes_on(tmp_path, capsys):
    """Issue 16 §4: lr 1e30 diverges; it is recorded as diverged (result.json, the table),
    the grid goes on and chooses among the finite lrs; a rerun skips it; all diverging is
    one clear error."""
    small_cifar(tmp_path / "root", n_train=4, n_test=1)
    run = ["--datasets", "cifar10", "--root", str(tmp_path / "root"), *MICRO, "--iters", "3",
           "--batch-size", "4", "--workers", "0", "--no-progress"]
    out = tmp_path / "a"
    assert T.main([*run, "--lrs", "0.01,1e30", "--output-dir", str(out)]) == 0
    res = json.loads((out / "runs" / "cifar10" / "result.json").read_text())
    assert res["chosen_lr"] == 0.01 and res["diverged"] == ["lr1e+30"]
    assert res["val_scores"]["lr1e+30"] is None
    run_res = json.loads((out / "runs" / "cifar10" / "lr1e+30" / "result.json").read_text())
    assert run_res["diverged"] and "non-finite" in run_res["reason"]
    md = (out / "results.md").read_text()
    assert "| cifar10 | 0.01 | " in md and "| diverged |" in md
    capsys.readouterr()
    assert T.main([*run, "--lrs", "0.01,1e30", "--output-dir", str(out)]) == 0  # rerun
    assert "lr1e+30: done before (diverged), skipped" in capsys.readouterr().out
    assert T.main([*run, "--lrs", "1e30,1e31", "--output-dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar10: every lr of the search diverged" in err[0]


def test_training_list_names_every_missing_file(tmp_path, caplog):
    """Issue 16 §4: require_readable looked at one image; listed files that do not exist are
    now named up front (first few and the count); a training set still substitutes them."""
    data = small_cifar(tmp_path / "root", n_train=1, n_test=1)
    cd = load_dataset("cifar10", tmp_path / "root")
    gone = [Path(cd.train_images[i]) for i in (3, 5)]
    for g in gone:
        g.unlink()
    ds = cd.dataset("train", D.eval_transform(32))
    ds.require_readable()
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "2 of 10 listed files do not exist" in msg and all(str(g) in msg for g in gone)
    assert ds[3][1] == cd.train_targets[4]  # substituted, with the substitute's label
    test = cd.dataset("test", D.eval_transform(32))  # an evaluation set: never substituted
    Path(cd.test_images[0]).unlink()
    with pytest.raises(OSError, match="unreadable image"):
        test[0]
    assert data.is_dir()


def test_linprobe_and_knn_refuse_an_unreadable_test_image_before_training(tmp_path, capsys):
    from mixedae.classification import knn as K
    from mixedae.classification import linprobe as LP
    data = small_cifar(tmp_path / "root", n_train=2, n_test=1)
    bad = damage(data / "test")
    for main, extra in ((LP.main, ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4"]),
                        (K.main, [])):
        out = tmp_path / main.__module__
        rc = main(["--data", str(data), "--val-folder", "test", *MICRO[:6], "--workers", "0",
                   "--output-dir", str(out), "--no-progress", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "2 of 12 evaluation images" in err[0], err
        assert all(str(f) in err[0] for f in bad)
        assert not (out / "data" / "checkpoint.pth").exists()
def test_train_loop_stops_before_saving_diverged_weights(tmp_path):
    """Issue 17 item 4: a step with finite gradients but a huge lr (1e30 at step 5) leaves the
    weights at ~1e29 (finite elements, an fp32 norm that overflows): training stops at that
    step, before its checkpoint, and the checkpoint on disk stays step 4."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ds = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    with pytest.raises(TrainingDiverged, match=r"non-finite weights .* at step 5; .*last good "
                                               r"checkpoint: step 4"):
        E.train_loop(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     train_set=ds, loss_fn=torch.nn.functional.cross_entropy, batch_size=4,
                     total_steps=16, lr_at=lambda s: 1e30 if s == 4 else 0.1,
                     device=torch.device("cpu"), ckpt_path=tmp_path / "checkpoint.pth",
                     ckpt_every=1, amp=False, max_bad_steps=3)
    ck = E.load_checkpoint(tmp_path / "checkpoint.pth")
    assert ck["step"] == 4 and all(v.abs().max() < 100 for v in ck["model"].values())
    assert model.weight.abs().max() > 1e20  # the step was applied: only the save was held
