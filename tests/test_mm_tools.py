"""tools/: prepare_ade20k.py, dist_train.sh, task detection and machine adaptation of configs."""
import subprocess
import sys
import zipfile

import pytest
from mmengine.config import Config

import mixedae.mm  # noqa: F401
from mixedae.mm.runner import adapt_to_machine, detect_task

from conftest import REPO, data_dir


def run(*args):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=REPO)


def test_prepare_ade20k_from_zip_and_folder(tmp_path):
    ade = data_dir("ade_tiny")
    archive = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as z:   # an archive laid out like the official one
        for sub in ("images", "annotations"):
            for f in sorted((ade / sub).rglob("*")):
                if f.is_file():
                    z.write(f, f"ADEChallengeData2016/{f.relative_to(ade)}")
    r = run(sys.executable, "tools/prepare_ade20k.py", "--src", archive, "--out", tmp_path / "ade")
    assert r.returncode == 0, r.stderr
    assert "22 training / 11 validation" in r.stdout
    assert (tmp_path / "ade/ADEChallengeData2016/annotations/validation").is_dir()
    r = run(sys.executable, "tools/prepare_ade20k.py", "--src", ade, "--out", tmp_path / "ade2")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ade2/ADEChallengeData2016").is_symlink()


def test_prepare_ade20k_missing_archive_is_one_line(tmp_path):
    r = run(sys.executable, "tools/prepare_ade20k.py", "--src", tmp_path / "nope.zip",
            "--out", tmp_path / "ade")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.zip not found" in lines[0]
    (tmp_path / "bad").mkdir()
    r = run(sys.executable, "tools/prepare_ade20k.py", "--src", tmp_path / "bad",
            "--out", tmp_path / "ade")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "missing folder" in r.stderr


def test_dist_train_script():
    assert run("bash", "-n", "tools/dist_train.sh").returncode == 0
    r = run("bash", "tools/dist_train.sh")
    assert r.returncode == 2 and "usage" in r.stderr
    r = run(sys.executable, "tools/train.py", "--help")
    assert r.returncode == 0 and "--pretrained" in r.stdout and "--cfg-options" in r.stdout


def test_task_detection_and_cpu_adaptation(tmp_path):
    seg = Config.fromfile(str(REPO / "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"))
    det = Config.fromfile(str(REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"))
    assert detect_task(seg) == "mmseg" and detect_task(det) == "mmdet"
    for cfg, task in ((seg, "mmseg"), (det, "mmdet")):
        cfg._cfg_dict.pop("default_scope")
        assert detect_task(cfg) == task   # from the model type
    notes = adapt_to_machine(det, distributed=False)
    assert "SyncBN" in notes[0]
    assert "SyncBN" not in det.pretty_text
    assert det.model.roi_head.bbox_head[0].norm_cfg.type == "BN"
    cfg = Config(dict(model=dict(type="NoSuchDetector")))
    with pytest.raises(ValueError, match="NoSuchDetector"):
        detect_task(cfg)


def test_cpu_distributed_adaptation():
    """No CUDA + distributed: SyncBN -> BN (no CPU kernel), gloo, DDP without device_ids."""
    if __import__("torch").cuda.is_available():
        pytest.skip("CPU-only adaptation")
    seg = Config.fromfile(str(REPO / "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"))
    notes = adapt_to_machine(seg, distributed=True)
    assert any("SyncBN is GPU-only" in n for n in notes)
    assert "SyncBN" not in seg.pretty_text and seg.env_cfg.dist_cfg.backend == "gloo"
    assert seg.model_wrapper_cfg.type == "CPUDistributedDataParallel"
    from mmengine.registry import MODEL_WRAPPERS
    assert MODEL_WRAPPERS.get("CPUDistributedDataParallel") is not None


def test_configure_test_options(tmp_path):
    """tools/test.py's options as config changes (the runs themselves: test_mm_test_infer)."""
    from mixedae.mm.testing import configure_test
    seg = Config.fromfile(str(REPO / "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"))
    det = Config.fromfile(str(REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"))
    configure_test(seg, "mmseg", out="pngs", show=True, wait_time=0.5, show_dir="vis")
    hook = seg.default_hooks.visualization
    assert (hook.draw, hook.show, hook.wait_time, hook.interval) == (True, True, 0.5, 1)
    assert seg.visualizer.save_dir.endswith("/vis")
    assert seg.test_evaluator.output_dir.endswith("/pngs")
    configure_test(det, "mmdet", out="p.pkl", show_dir="vis")
    assert det.default_hooks.visualization.test_out_dir.endswith("/vis")
    assert [e["type"] for e in det.test_evaluator] == ["CocoMetric", "DumpDetResults"]
    seg2 = Config.fromfile(str(REPO / "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"))
    configure_test(seg2, "mmseg", out="p.pkl", tta=True)
    assert seg2.model.type == "SegTTAModel" and seg2.model.module.type == "EncoderDecoder"
    assert seg2.test_dataloader.dataset.pipeline[1].type == "TestTimeAug"
    assert [e["type"] for e in seg2.test_evaluator] == ["IoUMetric", "DumpResults"]
    seg2._cfg_dict.pop("tta_pipeline")
    with pytest.raises(ValueError, match="defines no tta_pipeline"):
        configure_test(seg2, "mmseg", tta=True)
