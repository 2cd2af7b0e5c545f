"""End to end on the real small datasets: micro pretraining checkpoint → conversion →
tools/train.py (real mmengine Runner) → evaluation with mmseg IoUMetric / mmdet CocoMetric
(pycocotools bbox + segm AP) → tools/test.py on the saved checkpoint."""
import json
import math
import subprocess
import sys

import torch
from safetensors.torch import save_file

from mixedae.model.vit import create_vit

from conftest import REPO, data_dir


def write_pretrain_run(tmp_path):
    torch.manual_seed(0)
    enc = create_vit("micro")
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd.update({"decoder.embed.weight": torch.randn(32, 64), "decoder.mask_token": torch.zeros(1, 1, 32),
               "projector.weight": torch.randn(16, 64), "projector.bias": torch.zeros(16)})
    run = tmp_path / "pretrain_run"
    run.mkdir()
    save_file(sd, str(run / "model.safetensors"),
              metadata={"config": json.dumps({"model": "micro", "patch_size": 16,
                                              "img_size": 224})})
    return run


def run_tool(*args, timeout=400):
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                       cwd=REPO, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    return out


def scalars(work_dir):
    files = sorted(work_dir.glob("*/vis_data/scalars.json"))
    assert files, f"no scalars.json under {work_dir}"
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def check_training(records, iters):
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, iters + 1))
    for r in train:
        for k, v in r.items():
            if k.startswith("loss") or ".loss" in k:
                assert math.isfinite(v), (k, v)
    return train


def test_upernet_ade_tiny(tmp_path):
    ade = data_dir("ade_tiny")
    run = write_pretrain_run(tmp_path)
    # convert through the CLI first, train from the converted backbone file
    out = run_tool("-m", "mixedae.cli", "convert", run, tmp_path / "bb.safetensors", "--to", "mm")
    assert "decoder" in out and "projector" in out
    cfg_path = tmp_path / "seg_tiny.py"
    run_tool("-m", "mixedae.mm.smoke", "seg", ade, cfg_path)
    wd = tmp_path / "work_seg"
    log = run_tool(REPO / "tools/train.py", cfg_path, "--work-dir", wd,
                   "--pretrained", tmp_path / "bb.safetensors")
    assert "MixedAEViT: loaded" in log and "SyncBN" in log
    assert "warning: no CUDA" not in log   # the tiny configs are fine on CPU
    recs = scalars(wd)
    check_training(recs, 6)
    val = [r for r in recs if "mIoU" in r]
    assert val and 0.0 <= val[-1]["mIoU"] <= 100.0
    print(f"ade_tiny after 6 iters: mIoU {val[-1]['mIoU']:.2f} aAcc {val[-1]['aAcc']:.2f}")
    ckpt = wd / "iter_6.pth"
    assert ckpt.is_file()
    # the Runner checkpoint of tools/train.py converts back to our encoder (issue 10)
    out = run_tool("-m", "mixedae.cli", "convert", ckpt, tmp_path / "back.safetensors",
                   "--to", "vit")
    assert "(mm, ViT-micro)" in out and "task heads / neck" in out
    run_tool(REPO / "tools/test.py", cfg_path, ckpt, "--work-dir", tmp_path / "test_seg",
             "--metrics-out", tmp_path / "seg_metrics.json")
    metrics = json.loads((tmp_path / "seg_metrics.json").read_text())
    assert abs(metrics["mIoU"] - val[-1]["mIoU"]) < 1e-6


def test_cascade_mask_rcnn_coco_tiny(tmp_path):
    coco = data_dir("coco_tiny")
    run = write_pretrain_run(tmp_path)
    cfg_path = tmp_path / "det_tiny.py"
    run_tool("-m", "mixedae.mm.smoke", "det", coco, cfg_path)
    wd = tmp_path / "work_det"
    # the pretraining run dir itself, converted on the fly
    log = run_tool(REPO / "tools/train.py", cfg_path, "--work-dir", wd, "--pretrained", run)
    assert "MixedAEViT: loaded" in log and "dropped: " in log
    recs = scalars(wd)
    train = check_training(recs, 4)
    assert all(k in train[-1] for k in ("loss_rpn_cls", "s0.loss_cls", "s2.loss_bbox",
                                        "s0.loss_mask"))
    val = [r for r in recs if "coco/bbox_mAP" in r]
    assert val, recs[-1]
    for k in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert 0.0 <= val[-1][k] <= 1.0, (k, val[-1][k])
    print("coco_tiny after 4 iters: " + ", ".join(f"{k} {v:.4f}" for k, v in val[-1].items()
                                                   if k.startswith("coco/")))
    ckpt = wd / "iter_4.pth"
    run_tool(REPO / "tools/test.py", cfg_path, ckpt, "--work-dir", tmp_path / "test_det",
             "--metrics-out", tmp_path / "det_metrics.json")
    metrics = json.loads((tmp_path / "det_metrics.json").read_text())
    assert "coco/segm_mAP" in metrics and "coco/bbox_mAP" in metrics
