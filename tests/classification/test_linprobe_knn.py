"""``mixedae linprobe`` (MAE's recipe) and ``mixedae knn`` (DINO's weighted vote): their pieces
against re-typed references, and both CLIs end to end on the real tiny data (cls_tiny with
the 11-dataset loader, imagenet_tiny as ImageFolder data), resumable and under torchrun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixedae.classification import knn as K
from mixedae.classification import linprobe as L
from mixedae.classification.cli_common import resolve_model_args

from conftest import data_dir
from test_transfer import fake_voc_root, write_pretrain_checkpoint

REPO = Path(__file__).resolve().parents[2]
MICRO = ["--model", "micro", "--patch-size", "8", "--img-size", "32", "--workers", "0",
         "--no-progress"]

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- k-NN ---------------------------------------------------------------------------------
def dino_votes(train, labels, test, k, T, C):
    """DINO's knn_classifier, re-typed: one-hot retrieval × exp(sim / T), summed."""
    sim, idx = (test @ train.T).topk(k, dim=1)
    one_hot = torch.zeros(len(test) * k, C).scatter_(1, labels[idx].view(-1, 1), 1)
    return (one_hot.view(len(test), k, C) * (sim / T).exp().view(len(test), k, 1)).sum(1)


def test_knn_votes_match_dino_and_hand():
    g = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    test = torch.nn.functional.normalize(torch.randn(70, 16, generator=g), dim=1)
    labels = torch.randint(0, 9, (300,), generator=g)
    got = K.knn_votes(train, labels, test, 20, 0.07, 9, chunk=32)
    torch.testing.assert_close(got, dino_votes(train, labels, test, 20, 0.07, 9))
    # by hand: two neighbours at cosine 1 (class 1) and 0 (class 0), T = 0.5
    tr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    v = K.knn_votes(tr, torch.tensor([1, 0, 0]), torch.tensor([[1.0, 0.0]]), 2, 0.5, 2)
    torch.testing.assert_close(v, torch.tensor([[1.0, torch.e ** 2]]))
    # multi-label rows vote with their label vectors
    v = K.knn_votes(tr, torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]),
                    torch.tensor([[1.0, 0.0]]), 2, 0.5, 2)
    torch.testing.assert_close(v, torch.tensor([[torch.e ** 2, torch.e ** 2 + 1.0]]))


def test_knn_votes_for_several_k_match_dino_per_k():
    """One search for the max-k neighbours, cut to each k == DINO's knn_classifier per k."""
    g = torch.Generator().manual_seed(1)
    train = torch.nn.functional.normalize(torch.randn(250, 8, generator=g), dim=1)
    test = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    labels = torch.randint(0, 7, (250,), generator=g)
    got = K.knn_votes(train, labels, test, [1, 5, 200, 20], 0.07, 7, chunk=16)
    assert list(got) == [1, 5, 200, 20]
    for k, v in got.items():
        torch.testing.assert_close(v, dino_votes(train, labels, test, k, 0.07, 7))


def test_knn_defaults_are_dinos():
    args = K.get_parser().parse_args(["--data", "x", "--output-dir", "y"])
    assert args.nb_knn == [10, 20, 100, 200] and args.temperature == 0.07  # DINO eval_knn.py
    old = K.get_parser().parse_args(["--data", "x", "--output-dir", "y", "--k", "7"])
    assert old.nb_knn == [7]  # the older flag name still works


def test_knn_imagenet_tiny_self_retrieval_and_cache(tmp_path, capsys):
    """Train = test = the 500 imagenet_tiny images: each image finds itself; one image per
    class, so for every k the other neighbours are other classes with one vote each, all
    weaker than the image itself (similarity 1): top-1 is 100 for every k."""
    root = data_dir("imagenet_tiny")
    argv = ["--data", str(root), "--train-folder", ".", "--val-folder", ".",
            "--output-dir", str(tmp_path / "o"), *MICRO]
    assert K.main(argv) == 0  # DINO's k: 10 20 100 200, one extraction
    ds = tmp_path / "o" / "imagenet_tiny"
    r = json.loads((ds / "result.json").read_text())
    assert r["nb_knn"] == [10, 20, 100, 200] and list(r["by_k"]) == ["10", "20", "100", "200"]
    for k, s in r["by_k"].items():
        assert s["k"] == int(k) and s["metric"] == "top1" and s["n_test"] == 500
        assert s["test_eval"]["top1"] == 100.0
        assert s == json.loads((ds / f"k{k}" / "result.json").read_text())
        assert len((ds / f"k{k}" / "per_class.csv").read_text().splitlines()) == 501
    md = (tmp_path / "o" / "results.md").read_text()
    assert "k-NN (k 10, 20, 100, 200, T 0.07" in md and "Aircraft" not in md
    assert ("| data | metric | random-init k=10 | random-init k=20 | random-init k=100 | "
            "random-init k=200 |") in md and "| imagenet_tiny | top-1 | 100.00 | 100.00 |" in md
    cache = ds / "features"
    assert (cache / "train.pt").is_file() and not list(cache.glob("*.parts"))
    mtime = (cache / "train.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert K.main([*argv, "--k", "1"]) == 0  # another k: the features come from the cache
    assert capsys.readouterr().out.count("features from cache") == 2
    assert (cache / "train.pt").stat().st_mtime_ns == mtime
    r1 = json.loads((ds / "k1" / "result.json").read_text())
    assert r1["k"] == 1 and r1["test_eval"]["top1"] == 100.0
    assert "| imagenet_tiny | top-1 | 100.00 |" in (tmp_path / "o" / "results.md").read_text()


def test_knn_cls_tiny_datasets_one_row_per_k_and_tables_on_interrupt(tmp_path, monkeypatch):
    root = data_dir("cls_tiny")
    out = tmp_path / "o"
    ck = write_pretrain_checkpoint(tmp_path / "pt", img_size=32)
    features = K._features

    def interrupted_on_cifar(args, data, *a):  # Ctrl-C while extracting the second data
        if data.name == "cifar10":
            raise KeyboardInterrupt
        return features(args, data, *a)
    monkeypatch.setattr(K, "_features", interrupted_on_cifar)
    assert K.main(["--datasets", "caltech101,cifar10", "--root", str(root), "--output-dir",
                   str(out), "--checkpoint", str(ck), "--img-size", "32", "--workers", "0",
                   "--no-progress"]) == 130
    r = json.loads((out / "caltech101" / "result.json").read_text())["by_k"]["20"]
    assert r["metric"] == "mean_per_class" and r["test_score"] == r["test_eval"]["mean_per_class"]
    assert r["test_eval"]["n"] == 200 and r["test_score"] > 10.0  # 10 classes
    assert (out / "caltech101" / "k20" / "confusion.png").is_file()
    md = (out / "results.md").read_text()
    assert "| metric | mean per-class |" in md and "interrupted during cifar10" in md
    rows = [x for x in md.splitlines() if x.startswith("| pt k=")]
    assert [x.split(" | ")[0] for x in rows] == [f"| pt k={k}"
                                                 for k in (10, 20, 100, 200)]
    assert f"| {r['test_score']:.1f} |" in rows[1]  # the k=20 row, Caltech column


# ---- linear probing -----------------------------------------------------------------------
def mae_lars_step(p, grad, mu, lr, wd=0.0, tc=0.001, momentum=0.9):
    """MAE's util/lars.py step for one parameter, re-typed."""
    dp = grad
    if p.ndim > 1:
        dp = dp.add(p, alpha=wd)
        pn, un = torch.norm(p), torch.norm(dp)
        one = torch.ones_like(pn)
        q = torch.where(pn > 0., torch.where(un > 0, tc * pn / un, one), one)
        dp = dp.mul(q)
    mu.mul_(momentum).add_(dp)
    p.add_(mu, alpha=-lr)


def test_probe_is_mae_linprobe_and_lars_is_maes(tmp_path):
    ck = write_pretrain_checkpoint(tmp_path / "pt", img_size=32)
    args = L.get_parser().parse_args(["--data", "x", "--output-dir", "y", "--checkpoint",
                                      str(ck), "--img-size", "32"])
    resolve_model_args(args)
    model, loaded = L.build_probe(args, 7)
    from safetensors.torch import load_file
    sd = load_file(str(ck))
    assert torch.equal(model.norm.weight, sd["encoder.norm.weight"])  # cls: pretrained norm
    assert isinstance(model.fc_norm, torch.nn.Identity) and "norm.weight" not in loaded["fresh"]
    bn, fc = model.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.1.weight",
                                                                             "head.1.bias"]
    assert 0.005 < fc.weight.std().item() < 0.015 and fc.bias.abs().sum() == 0
    args.feature = "avg"
    avg, loaded = L.build_probe(args, 7)
    assert isinstance(avg.norm, torch.nn.Identity) and "fc_norm.weight" in loaded["fresh"]
    # timm's Lars as set up == MAE's LARS, step by step
    g = torch.Generator().manual_seed(0)
    ref = [p.detach().clone() for p in fc.parameters()]
    mus = [torch.zeros_like(p) for p in ref]
    opt = L.build_lars(model.head, lr=0.5)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for p, gr in zip(fc.parameters(), grads):
            p.grad = gr.clone()
        opt.step()
        for p, gr, mu in zip(ref, grads, mus):
            mae_lars_step(p, gr, mu, lr=0.5)
    for p, r in zip(fc.parameters(), ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)


def test_linprobe_cls_tiny_resumes_exactly(tmp_path):
    root = data_dir("cls_tiny")
    base = ["--datasets", "caltech101", "--root", str(root), "--batch-size", "64", "--epochs",
            "2", "--warmup-epochs", "1", "--blr", "0.5", "--eval-every", "1", *MICRO]
    a, b = tmp_path / "a", tmp_path / "b"
    assert L.main([*base, "--output-dir", str(a), "--max-steps", "5"]) == 0
    assert (a / "caltech101" / "checkpoint.pth").is_file()
    part = json.loads((a / "caltech101" / "result.json").read_text())  # the probe at step 5
    assert part["finished"] is False and part["step"] == 5 and part["steps"] == 8
    assert part["pretrained"] is None  # no --checkpoint: random initialisation, recorded
    md = (a / "results.md").read_text()
    assert f"| {part['test_score']:.1f}† |" in md and "at caltech101: step 5 of 8" in md
    assert "caltech101" in (a / "results.csv").read_text().splitlines()[1].split(",")[-1]
    fit = L._fit

    def interrupted(*a_, **kw):
        raise KeyboardInterrupt
    L._fit = interrupted  # Ctrl-C in the resumed run: the tables stay, and say where it ended
    try:
        assert L.main([*base, "--output-dir", str(a)]) == 130
    finally:
        L._fit = fit
    md = (a / "results.md").read_text()
    assert f"| {part['test_score']:.1f}† |" in md and "interrupted during caltech101" in md
    assert L.main([*base, "--output-dir", str(a)]) == 0
    assert "†" not in (a / "results.md").read_text()
    assert L.main([*base, "--output-dir", str(b)]) == 0
    ra, rb = (json.loads((d / "caltech101" / "result.json").read_text()) for d in (a, b))
    assert ra["resumed_from"] == 5 and rb["resumed_from"] is None and ra["steps"] == 8
    assert ra["test_eval"] == rb["test_eval"] and ra["metric"] == "mean_per_class"
    log = [json.loads(x) for x in (a / "caltech101" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if e.get("event") == "eval" and "epoch" in e] == [0]
    assert (a / "caltech101" / "tb").is_dir() and (a / "caltech101" / "per_class.csv").is_file()
    assert L.main([*base, "--output-dir", str(a), "--blr", "0.1"]) == 2  # other settings


def test_linprobe_imagenet_tiny_folder(tmp_path):
    root = data_dir("imagenet_tiny")
    out = tmp_path / "o"
    assert L.main(["--data", str(root), "--train-folder", ".", "--val-folder", ".",
                   "--batch-size", "250", "--epochs", "1", "--warmup-epochs", "0",
                   "--feature", "avg", "--output-dir", str(out), *MICRO]) == 0
    r = json.loads((out / "imagenet_tiny" / "result.json").read_text())
    assert r["metric"] == "top1" and r["n_train"] == 500 and r["steps"] == 2
    assert len((out / "imagenet_tiny" / "per_class.csv").read_text().splitlines()) == 501


def test_torchrun_two_ranks_knn_and_linprobe(tmp_path):
    """2 gloo ranks: sharded feature extraction assembles the single-process features, the
    sharded k-NN scores the same; linprobe runs its steps with the global batch split."""
    root = data_dir("cls_tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mixedae.cli"]
    knn = ["knn", "--datasets", "caltech101", "--root", str(root), "--chunk", "128", *MICRO]
    p = subprocess.run([*run, *knn, "--output-dir", str(tmp_path / "ddp")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert K.main([*knn[1:], "--output-dir", str(tmp_path / "one")]) == 0
    f2, f1 = (torch.load(tmp_path / d / "caltech101" / "features" / "train.pt",
                         weights_only=True)["feats"] for d in ("ddp", "one"))
    assert f2.shape == f1.shape == (300, 64)
    torch.testing.assert_close(f2.float(), f1.float(), atol=2e-3, rtol=1e-3)
    r2, r1 = (json.loads((tmp_path / d / "caltech101" / "result.json").read_text())["by_k"]
              for d in ("ddp", "one"))
    assert list(r2) == ["10", "20", "100", "200"]
    for k in r2:
        assert r2[k]["test_eval"]["n"] == 200 and r2[k]["test_eval"] == r1[k]["test_eval"]
    lp = ["linprobe", "--datasets", "caltech101", "--root", str(root), "--batch-size", "64",
          "--epochs", "1", "--warmup-epochs", "0", *MICRO, "--output-dir", str(tmp_path / "lp")]
    p = subprocess.run([*run, *lp], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "lp" / "caltech101" / "result.json").read_text())
    assert r["steps"] == 4 and r["test_eval"]["n"] == 200  # 300 / 64 global; every image once


def test_multilabel_voc_knn_and_linprobe(tmp_path):
    """VOC (fake devkit root): k-NN votes with label vectors, the probe trains with the masked
    BCE; both scored by the devkit's 11-point mAP with the standard AP beside it."""
    root = fake_voc_root(tmp_path / "root")
    assert K.main(["--datasets", "voc", "--root", str(root), "--nb-knn", "3", "--output-dir",
                   str(tmp_path / "knn"), *MICRO]) == 0
    assert L.main(["--datasets", "voc", "--root", str(root), "--batch-size", "8", "--epochs",
                   "2", "--warmup-epochs", "1", "--output-dir", str(tmp_path / "lp"),
                   *MICRO]) == 0
    for d in ("knn", "lp"):
        r = json.loads((tmp_path / d / "voc2007" / "result.json").read_text())
        r = r["by_k"]["3"] if d == "knn" else r
        ds = tmp_path / d / "voc2007" / ("k3" if d == "knn" else "")
        assert r["metric"] == "map11" and set(r["test_eval"]) == {"map11", "map", "n"}
        assert 0 < r["test_score"] <= 100 and r["test_eval"]["n"] == 8
        assert (ds / "per_class_ap.png").is_file()
        v = f"{r['test_score']:.1f}"  # the VOC column and the average (one dataset)
        assert f"| {v} | {v} |" in (tmp_path / d / "results.md").read_text()


def test_feature_cache_resumes_from_pieces_and_rejects_other_keys(tmp_path):
    from torch.utils.data import TensorDataset
    from mixedae.classification.features import cached_features
    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    ds = TensorDataset(x, torch.zeros(23, dtype=torch.int64))
    model = torch.nn.Linear(5, 3)
    calls = []

    class Dies(torch.nn.Module):  # a run killed while extracting the third chunk
        def forward(self, b):
            if len(calls) == 4:  # chunks [0, 10) and [10, 20) took batches of 8 + 2 each
                raise KeyboardInterrupt
            calls.append(len(b))
            return model(b)

    class Counting(torch.nn.Module):
        def forward(self, b):
            seen.append(len(b))
            return model(b)

    cache, key = tmp_path / "f" / "train.pt", {"model": "a"}
    kw = dict(batch_size=8, device=torch.device("cpu"), chunk=10)
    with pytest.raises(KeyboardInterrupt):
        cached_features(Dies(), ds, cache, key, **kw)
    assert not cache.exists() and len(list((tmp_path / "f").glob("train.parts/*.pt"))) == 2
    seen = []
    counting = Counting()
    f = cached_features(counting, ds, cache, key, **kw)
    assert seen == [3]  # only the missing last chunk (examples 20..22) was extracted
    torch.testing.assert_close(f, model(x).detach().half())
    assert cache.is_file() and not (tmp_path / "f" / "train.parts").exists()
    assert cached_features(counting, ds, cache, key, **kw) is not None and seen == [3]
    cached_features(counting, ds, cache, {"model": "b"}, **kw)  # another key: recomputed
    assert seen == [3, 8, 2, 8, 2, 3]
