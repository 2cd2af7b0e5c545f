"""``mixedae transfer`` on the real tiny data (cls_tiny) with a micro ViT, and the strict
pretrained-weight loader."""
import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mixedae.classification import datasets as D
from mixedae.classification import engine as E
from mixedae.runtime.errors import CheckpointError
from mixedae.classification import transfer as T
from mixedae.model.vit import create_vit
from mixedae.classification.transfer_protocol import lr_tag

from conftest import data_dir

MICRO = ["--model", "micro", "--patch-size", "8", "--img-size", "32", "--workers", "0",
         "--log-every", "20"]


pytestmark = pytest.mark.usefixtures("single_thread")


def write_pretrain_checkpoint(run_dir: Path, img_size: int = 16, seed: int = 1) -> Path:
    """A micro 'pretrained' checkpoint in the pretraining format (encoder./decoder./projector.
    keys, config metadata) at a different resolution than the transfer runs."""
    torch.manual_seed(seed)
    enc = create_vit("micro", patch_size=8, img_size=img_size)
    sd = {f"encoder.{k}": v.contiguous() for k, v in enc.state_dict().items()}
    sd["decoder.mask_token"] = torch.zeros(1, 1, 32)
    sd["decoder.blocks.0.mlp.fc1.weight"] = torch.randn(64, 32)
    sd["projector.0.weight"] = torch.randn(16, 64)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "model.safetensors"
    cfg = {"model": "micro", "patch_size": 8, "img_size": img_size, "mixing": "compose"}
    save_file(sd, str(path), metadata={"config": json.dumps(cfg)})
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---- pretrained loading -------------------------------------------------------------------


def classifier(img_size=32, **kw):
    return create_vit("micro", patch_size=8, img_size=img_size, num_classes=7, global_pool="avg",
                      learnable_pos_embed=True, **kw)


def test_load_pretraining_format_resizes_pos_embed(tmp_path):
    path = write_pretrain_checkpoint(tmp_path / "pt", img_size=16)
    model = classifier(32)
    head_before = model.head.weight.clone()
    info = E.load_pretrained(model, tmp_path / "pt")  # the run directory works too
    assert info["format"] == "pretrain" and info["resized"]
    assert set(info["fresh"]) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "decoder.mask_token" in info["dropped"] and "norm.weight" in info["dropped"]
    assert "projector.0.weight" in info["dropped"]
    from safetensors.torch import load_file
    sd = load_file(str(path))
    assert torch.equal(model.blocks[2].attn.qkv.weight, sd["encoder.blocks.2.attn.qkv.weight"])
    assert torch.equal(model.pos_embed[:, 0], sd["encoder.pos_embed"][:, 0])  # cls kept
    assert model.pos_embed.shape == (1, 17, 64)
    assert torch.equal(model.head.weight, head_before)


def test_load_plain_mae_style_pth(tmp_path):
    src = create_vit("micro", patch_size=8, img_size=32)  # has the final norm (MAE encoder)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["mask_token"] = torch.zeros(1, 1, 32)
    sd["decoder_embed.weight"] = torch.zeros(32, 64)
    sd["decoder_pos_embed"] = torch.zeros(1, 17, 32)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "mae.pth")
    model = classifier(32)
    info = E.load_pretrained(model, tmp_path / "mae.pth")
    assert info["format"] == "plain" and not info["resized"]
    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed"} <= set(info["dropped"])
    assert torch.equal(model.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    # a timm-style classifier state dict (head of another task) as .safetensors
    other = create_vit("micro", patch_size=8, img_size=32, num_classes=3, global_pool="avg")
    save_file(other.state_dict(), str(tmp_path / "cls.safetensors"))
    info = E.load_pretrained(classifier(32), tmp_path / "cls.safetensors")
    assert "head.weight" in info["dropped"] and "fc_norm.weight" not in info["fresh"]


def test_load_fails_naming_keys(tmp_path):
    src = create_vit("micro", patch_size=8, img_size=32)
    sd = dict(src.state_dict())
    del sd["blocks.3.mlp.fc2.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.3\.mlp\.fc2\.weight"):
        E.load_pretrained(classifier(32), tmp_path / "missing.pth")
    sd = dict(src.state_dict(), **{"blocks.4.attn.qkv.weight": torch.zeros(192, 64)})
    torch.save(sd, tmp_path / "unexpected.pth")  # a 5th block in a 4-block model
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.4\.attn\.qkv\.weight"):
        E.load_pretrained(classifier(32), tmp_path / "unexpected.pth")
    sd = dict(src.state_dict(), **{"blocks.1.extra": torch.zeros(1)})
    torch.save(sd, tmp_path / "unknown.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.extra"):
        E.load_pretrained(classifier(32), tmp_path / "unknown.pth")
    tiny = create_vit("tiny", patch_size=8, img_size=32)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        E.load_pretrained(classifier(32), tmp_path / "tiny.pth")
    enc = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    enc["segment_table"] = torch.zeros(3)
    save_file(enc, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="segment_table"):
        E.load_pretrained(classifier(32), tmp_path / "odd.safetensors")


# ---- the benchmark on real tiny data ------------------------------------------------------


def test_grid_search_on_val_then_test_tables_and_resume(tmp_path, monkeypatch, capsys):
    root = data_dir("cls_tiny")
    out = tmp_path / "out"
    lrs = [1e-3, 1e-2, 3e-2]
    argv = ["--datasets", "cifar10", "--root", str(root), "--output-dir", str(out),
            "--iters", "50", "--batch-size", "64", "--lrs", ",".join(map(str, lrs)), *MICRO]
    calls = []
    orig = D.ClsData.dataset

    def spy(self, split, transform=None, indices=None, strict=None):
        done = [(out / "runs" / "cifar10" / lr_tag(lr) / "result.json").is_file() for lr in lrs]
        calls.append((split, indices is None, all(done)))
        return orig(self, split, transform, indices, strict)
    monkeypatch.setattr(D.ClsData, "dataset", spy)
    assert T.main(argv) == 0

    ds_dir = out / "runs" / "cifar10"
    summary = json.loads((ds_dir / "result.json").read_text())
    val = summary["val_scores"]
    assert list(val) == [lr_tag(x) for x in lrs]
    assert summary["chosen_lr"] == lrs[int(np.argmax([val[lr_tag(x)] for x in lrs]))]
    final = json.loads((ds_dir / "final" / "result.json").read_text())
    assert final["lr"] == summary["chosen_lr"] and final["eval_split"] == "test"
    assert final["n_eval"] == 1000 and final["n_train"] == 2000
    # the test split was built only for the final run, after the whole search
    test_calls = [c for c in calls if c[0] == "test"]
    assert len(test_calls) == 1 and test_calls[0][2]
    assert calls.index(test_calls[0]) == len(calls) - 1
    # search runs scored held-out *train* images only
    split = json.loads((ds_dir / "split.json").read_text())
    assert len(split["val"]) == 400 and not set(split["val"]) & set(split["train"])
    assert all("/train/" in p for p in split["val_images"])
    for lr in lrs:
        r = json.loads((ds_dir / lr_tag(lr) / "result.json").read_text())
        assert r["eval_split"] == "val" and r["n_eval"] == 400 and r["n_train"] == 1600
        assert r["score"] == val[lr_tag(lr)]
        assert (ds_dir / lr_tag(lr) / "log.jsonl").is_file()
        assert list((ds_dir / lr_tag(lr) / "tb").glob("events.out.tfevents.*"))
        assert not (ds_dir / lr_tag(lr) / "checkpoint.pth").exists()
    with capsys.disabled():
        print(f"\n[measured] cifar10 fresh micro: val {val}, chosen {summary['chosen_lr']}, "
              f"test top-1 {summary['test_score']:.2f}")
    # 10 classes: chance is 10 % (σ ≈ 0.95 points on 1000 images); 15 % is > 5σ above it
    assert summary["test_score"] >= 15.0

    # every metric stored; the protocol's (top-1 for CIFAR-10) is the score
    ev = summary["test_eval"]
    assert summary["metric"] == "top1" and summary["test_score"] == ev["top1"]
    assert {"top1", "top5", "mean_per_class", "loss", "n"} <= set(ev)
    # per-class accuracy and the confusion matrix of the final run
    fin = ds_dir / "final"
    per_class = list(csv.DictReader(open(fin / "per_class.csv")))
    assert [r["class"] for r in per_class] == sorted(r["class"] for r in per_class)
    assert sum(int(r["n"]) for r in per_class) == 1000
    assert sum(int(r["correct"]) for r in per_class) == round(ev["top1"] * 10)
    assert np.mean([float(r["accuracy"]) for r in per_class]) == pytest.approx(
        ev["mean_per_class"], abs=1e-3)
    cm = np.array([r[1:] for r in list(csv.reader(open(fin / "confusion.csv")))[1:]], int)
    assert cm.shape == (10, 10) and cm.sum() == 1000
    assert (fin / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # tables: Table 2 columns + average, the metric named, the paper row labelled as copied
    rows = list(csv.reader(open(out / "results.csv")))
    assert rows[0][:13] == ["Method", "Aircraft", "Caltech", "Cars", "C10", "C100", "DTD",
                            "Flowers", "Food", "Pets", "SUN", "VOC", "Avg."]
    assert rows[1][0] == "random-init"
    assert float(rows[1][4]) == pytest.approx(summary["test_score"], abs=1e-3)
    assert float(rows[1][12]) == pytest.approx(summary["test_score"], abs=1e-3)
    assert all(v == "" for i, v in enumerate(rows[1][1:12], 1) if i != 4)
    assert "paper Table 2, copied" in rows[2][0] and rows[2][1:13] == [
        "82.1000", "91.5000", "88.8000", "97.9000", "85.9000", "78.7000", "97.1000", "87.4000",
        "93.6000", "66.2000", "86.4000", "86.9000"]
    md = (out / "results.md").read_text()
    assert ("| Method | Aircraft | Caltech | Cars | C10 | C100 | DTD | Flowers | Food | Pets | "
            "SUN | VOC | Avg. |") in md
    assert ("| metric | mean per-class | mean per-class | top-1 | top-1 | top-1 | top-1 | "
            "mean per-class | top-1 | mean per-class | top-1 | 11-pt mAP |  |") in md
    assert "| cifar10 | " + f"{ev['top1']:.2f}*" in md  # the Table 2 metric marked

    # resume: everything finished is skipped, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in ds_dir.glob("*/result.json")}
    assert len(mtimes) == len(lrs) + 1
    capsys.readouterr()
    assert T.main(argv) == 0
    assert capsys.readouterr().out.count("skipped") == len(lrs) + 1
    assert {p: p.stat().st_mtime_ns for p in ds_dir.glob("*/result.json")} == mtimes
    assert json.loads((ds_dir / "result.json").read_text()) == summary
    # other settings into the same OUT are refused
    assert T.main([*argv, "--iters", "40"]) == 2
    assert "other settings (iters: 50 vs 40)" in capsys.readouterr().err


def test_pretrained_checkpoint_cifar10_and_caltech(tmp_path, capsys):
    root = data_dir("cls_tiny")
    ck = write_pretrain_checkpoint(tmp_path / "mixedae_micro", img_size=16)
    digest = hashlib.sha256(ck.read_bytes()).hexdigest()
    out = tmp_path / "out"
    argv = ["--datasets", "caltech101,cifar10", "--root", str(root), "--output-dir", str(out),
            "--checkpoint", str(tmp_path / "mixedae_micro"), "--img-size", "32",
            "--iters", "40", "--batch-size", "32", "--lrs", "0.03", "--workers", "0"]
    assert T.main(argv) == 0  # model/patch size come from the checkpoint metadata
    printed = capsys.readouterr().out
    assert printed.index("[transfer] caltech101:") < printed.index("[transfer] cifar10:")
    assert re.search(r"loaded \d+ tensors from \S+mixedae_micro\S+ \(pretrain layout"
                     r", pos_embed 2x2 -> 4x4\); dropped: ", printed)  # resample named
    scores = {}
    for name in ("cifar10", "caltech101"):
        s = json.loads((out / "runs" / name / "result.json").read_text())
        scores[name] = s["test_score"]
        start = read_jsonl(out / "runs" / name / "final" / "log.jsonl")[0]
        assert start["pretrained"]["format"] == "pretrain" and start["pretrained"]["resized"]
        assert s["metric"] == ("mean_per_class" if name == "caltech101" else "top1")
        assert s["test_score"] == s["test_eval"][s["metric"]]
        # every run and the summary record the weights they came from (runtime.provenance)
        for f in (out / "runs" / name).glob("*/result.json"):
            assert json.loads(f.read_text())["pretrained"]["sha256"] == digest, f
        assert s["pretrained"]["sha256"] == digest and s["pretrained"]["path"] == str(ck)
    with capsys.disabled():
        print(f"\n[measured] pretrain-format micro checkpoint: test (protocol metric) {scores}")
    assert all(v >= 20.0 for v in scores.values())
    rows = list(csv.reader(open(out / "results.csv")))
    assert rows[1][0] == "mixedae_micro" and rows[1][2] and rows[1][4]
    assert float(rows[1][12]) == pytest.approx(np.mean(list(scores.values())), abs=1e-3)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    root = data_dir("cls_tiny")
    base = ["--datasets", "cifar10", "--root", str(root), "--iters", "20", "--batch-size",
            "32", "--lrs", "0.01", "--ckpt-every", "5", *MICRO]
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.main([*base, "--output-dir", str(a), "--stop-after", "10"]) == 0
    run = a / "runs" / "cifar10" / "lr0.01"
    assert (run / "checkpoint.pth").is_file() and not (run / "result.json").exists()
    assert E.load_checkpoint(run / "checkpoint.pth")["step"] == 10
    assert T.main([*base, "--output-dir", str(a)]) == 0
    r = json.loads((run / "result.json").read_text())
    assert r["resumed_from"] == 10 and not (run / "checkpoint.pth").exists()
    log = read_jsonl(run / "log.jsonl")
    assert any(e.get("event") == "resume" and e["step"] == 10 for e in log)
    # the resumed run is the uninterrupted run (same data order, same RNG streams)
    assert T.main([*base, "--output-dir", str(b)]) == 0
    r2 = json.loads((b / "runs" / "cifar10" / "lr0.01" / "result.json").read_text())
    assert r2["resumed_from"] is None
    assert r["eval"] == r2["eval"]


def test_cli_errors(tmp_path, capsys):
    rc = T.main(["--datasets", "dtd,pets", "--root", str(tmp_path), "--output-dir",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "dtd/dtd/labels/train1.txt" in err and "dtd-r1.0.1.tar.gz" in err
    assert "oxford-iiit-pet/annotations/trainval.txt" in err  # every missing dataset named
    assert not (tmp_path / "o").exists()
    rc = T.main(["--datasets", "cifar10", "--root", str(tmp_path), "--output-dir",
                 str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nope.pth")])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err
    rc = T.main(["--datasets", "mnist", "--root", str(tmp_path), "--output-dir", str(tmp_path)])
    assert rc == 2 and "unknown dataset 'mnist'" in capsys.readouterr().err


def fake_voc_root(root: Path) -> Path:
    """24 tiny VOC2007 images (train 12 / val 4 / test 8) in the devkit layout."""
    from test_cls_datasets import jpg, voc_xml
    d = root / "VOCdevkit" / "VOC2007"
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "Annotations").mkdir()
    rng = np.random.RandomState(0)
    ids = {"train": [f"{i:06d}" for i in range(12)], "val": [f"{i:06d}" for i in range(12, 16)],
           "test": [f"{i:06d}" for i in range(16, 24)]}
    for split, names in ids.items():
        (d / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        for k, n in enumerate(names):
            objs = [(["dog", "cat", "person"][k % 3], 0), ("person", int(rng.rand() < 0.5))]
            (d / "Annotations" / f"{n}.xml").write_text(voc_xml(objs))
            jpg(d / "JPEGImages" / f"{n}.jpg", color=tuple(int(x) for x in rng.randint(0, 255, 3)),
                size=(20, 16))
    return root


def test_voc2007_multilabel_end_to_end_on_fake_root(tmp_path):
    """The multi-label path: masked BCE training, 11-point mAP on test, VOC column filled."""
    fake_voc_root(tmp_path / "root")
    out = tmp_path / "out"
    assert T.main(["--datasets", "voc", "--root", str(tmp_path / "root"), "--output-dir", str(out),
                   "--iters", "4", "--batch-size", "4", "--lrs", "0.01", "--val-frac", "0.25",
                   *MICRO]) == 0
    s = json.loads((out / "runs" / "voc2007" / "result.json").read_text())
    assert s["metric"] == "map11" and 0 <= s["test_score"] <= 100
    assert set(s["test_eval"]) == {"map11", "map", "n"} and s["test_eval"]["n"] == 8
    split = json.loads((out / "runs" / "voc2007" / "split.json").read_text())
    assert split["kind"] == "official" and split["val"] == [12, 13, 14, 15]  # VOC's val.txt
    assert s["val_split"] == "official"
    fin = out / "runs" / "voc2007" / "final"
    rows = list(csv.DictReader(open(fin / "per_class.csv")))
    assert [r["class"] for r in rows] == D.VOC_CLASSES
    assert (fin / "per_class_ap.png").is_file() and not (fin / "confusion.png").exists()
    rows = list(csv.reader(open(out / "results.csv")))
    assert float(rows[1][11]) == pytest.approx(s["test_score"], abs=1e-3)
    assert "std. mAP" in (out / "results.md").read_text()
