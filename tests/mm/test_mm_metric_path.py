"""The evaluation path is right: ground truth fed as predictions through tools/test.py (the
smoke configs' real dataloaders, the mmengine test loop, mmseg IoUMetric / mmdet CocoMetric
with pycocotools against the annotation file) gives mIoU 100 on ade_tiny and bbox/segm AP 1.0
on coco_tiny; known perturbations give the values computed independently here."""
import json
import pickle
import uuid

import numpy as np
import pytest
from PIL import Image

import mm_oracle  # noqa: F401  (registers the ground-truth models)
from mixedae.mm.smoke import tiny_det_config, tiny_seg_config

from mm_inproc import load_tool, run_tool
from conftest import data_dir

test_tool = load_tool("test")


def oracle_config(tmp_path, cfg, model: dict):
    cfg.model = model
    cfg.experiment_name = f"oracle_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{cfg.experiment_name}.py"
    cfg.dump(str(path))
    ckpt = tmp_path / "empty.pth"   # the oracle has no weights
    import torch
    torch.save({"state_dict": {}, "meta": {}}, str(ckpt))
    return path, ckpt


def run_test_tool(tmp_path, cfg_path, ckpt, *extra):
    out = tmp_path / "metrics.json"
    rc = test_tool.main([str(cfg_path), str(ckpt), "--work-dir", str(tmp_path / "wd"),
                         "--metrics-out", str(out), *map(str, extra)])
    assert rc == 0
    return json.loads(out.read_text())


# ---- ADE20K / mmseg IoUMetric -------------------------------------------------------------------
def ade_labels(ade):
    """Validation label maps in the evaluated label space (reduce_zero_label: 0 → 255, k → k-1)."""
    maps = []
    for f in sorted((ade / "annotations/validation").glob("*.png")):
        a = np.array(Image.open(f)).astype(np.int64)
        maps.append(np.where(a == 0, 255, a - 1))
    return maps


def miou(preds, gts, num_classes=150):
    """Independent mIoU: one confusion matrix over all pixels, classes absent from both
    prediction and ground truth skipped (NaN), ignore label 255."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for p, g in zip(preds, gts):
        keep = g != 255
        p, g = p[keep], g[keep]
        ai = np.bincount(p[p == g], minlength=num_classes)
        ap, ag = np.bincount(p, minlength=num_classes), np.bincount(g, minlength=num_classes)
        inter += ai
        union += ap + ag - ai
    with np.errstate(invalid="ignore"):
        return float(np.nanmean(inter / union) * 100)


def test_ade_ground_truth_gives_miou_100(tmp_path):
    ade = data_dir("ade_tiny")
    cfg_path, ckpt = oracle_config(tmp_path, tiny_seg_config(ade),
                                   dict(type="GroundTruthSegmentor"))
    m = run_test_tool(tmp_path, cfg_path, ckpt, "--out", tmp_path / "pred_png",
                      "--show-dir", tmp_path / "show")
    print(f"ade_tiny ground truth: {m}")
    assert m["mIoU"] == 100.0 and m["aAcc"] == 100.0 and m["mAcc"] == 100.0
    # --out: mmseg's label PNGs, back in the dataset's label space = the annotation files
    anns = sorted((ade / "annotations/validation").glob("*.png"))
    pngs = sorted((tmp_path / "pred_png").glob("*.png"))
    assert [p.name for p in pngs] == [a.name for a in anns]
    for p, a in zip(pngs, anns):
        assert np.array_equal(np.array(Image.open(p)), np.array(Image.open(a))), p.name
    # --show-dir: one painted image per test image, where docs/transfer.md says
    assert len(list((tmp_path / "show/vis_data/vis_image").glob("*.png"))) == len(anns)


def test_ade_relabelled_class_gives_the_independent_miou(tmp_path):
    ade = data_dir("ade_tiny")
    gts = ade_labels(ade)
    counts = np.bincount(np.concatenate([g[g != 255] for g in gts]), minlength=150)
    src, dst = [int(i) for i in np.argsort(counts)[::-1][:2]]   # most frequent -> second
    preds = [np.where(g == src, dst, g) for g in gts]
    want = miou(preds, gts)
    assert miou(gts, gts) == 100.0 and want < 99.0
    cfg_path, ckpt = oracle_config(tmp_path, tiny_seg_config(ade),
                                   dict(type="GroundTruthSegmentor", relabel=(src, dst)))
    m = run_test_tool(tmp_path, cfg_path, ckpt)
    print(f"ade_tiny class {src} -> {dst}: IoUMetric {m['mIoU']}, independent {want:.4f}")
    assert m["mIoU"] == pytest.approx(want, abs=0.006)   # IoUMetric rounds to 2 decimals


# ---- COCO / mmdet CocoMetric (pycocotools) -------------------------------------------------------
def coco_oracle_config(coco):
    """The smoke det config on all 100 val images (its test pipeline resizes the image to a
    192 px short side and loads the annotations after that, in original coordinates)."""
    return tiny_det_config(coco, val_images=None)


def test_coco_ground_truth_gives_ap_1(tmp_path):
    coco = data_dir("coco_tiny")
    cfg_path, ckpt = oracle_config(tmp_path, coco_oracle_config(coco),
                                   dict(type="GroundTruthDetector"))
    m = run_test_tool(tmp_path, cfg_path, ckpt, "--out", tmp_path / "preds.pkl")
    print("coco_tiny ground truth: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    for kind in ("bbox", "segm"):
        for k in ("mAP", "mAP_50", "mAP_75", "mAP_l"):
            assert m[f"coco/{kind}_{k}"] == 1.0, (kind, k, m)
    preds = pickle.loads((tmp_path / "preds.pkl").read_bytes())   # mmdet's DumpDetResults
    assert len(preds) == 100
    anns = json.loads((coco / "annotations/instances_val2017.json").read_text())["annotations"]
    n = sum(len(p["pred_instances"]["bboxes"]) for p in preds)
    assert n == sum(1 for a in anns if not a["iscrowd"])   # every non-crowd instance


def test_coco_shifted_boxes_give_ap_0_7(tmp_path):
    """Every box moved right by 10 % of its width: IoU = 0.9 / 1.1 = 0.818, a hit at the
    thresholds 0.50 .. 0.80 (7 of 10), so AP = 0.7 with AP50 = AP75 = 1."""
    coco = data_dir("coco_tiny")
    cfg_path, ckpt = oracle_config(tmp_path, coco_oracle_config(coco),
                                   dict(type="GroundTruthDetector", shift=0.1))
    m = run_test_tool(tmp_path, cfg_path, ckpt)
    print(f"coco_tiny shifted boxes: bbox {m['coco/bbox_mAP']}, segm {m['coco/segm_mAP']}")
    assert m["coco/bbox_mAP"] == pytest.approx(0.7, abs=1e-3)
    assert m["coco/bbox_mAP_50"] == 1.0 and m["coco/bbox_mAP_75"] == 1.0
    assert m["coco/segm_mAP"] == 1.0   # masks untouched


def test_no_metrics_is_one_error_line(tmp_path):
    coco = data_dir("coco_tiny")
    cfg = tiny_det_config(coco, val_images=4)
    cfg.custom_imports = dict(imports=["mixedae.mm", "mm_oracle"], allow_failed_imports=False)
    cfg.model = dict(type="GroundTruthDetector", empty=True)
    path = tmp_path / "empty.py"
    cfg.dump(str(path))
    import torch
    torch.save({"state_dict": {}, "meta": {}}, str(tmp_path / "empty.pth"))
    r = run_tool("tools/test.py", path, tmp_path / "empty.pth", "--work-dir", tmp_path / "wd",
                 "--metrics-out", tmp_path / "m.json")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert err[-1].startswith("error: the test evaluator (CocoMetric) produced no metrics")
    assert not [line for line in err if line.startswith("Traceback")]
    assert not (tmp_path / "m.json").exists()
