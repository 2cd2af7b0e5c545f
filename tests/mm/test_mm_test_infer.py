"""tools/test.py options (--tta, --out, --show-dir, bad flags) and tools/infer.py on random
micro models built from the smoke configs (real ade_tiny / coco_tiny images). The tools run
in-process (their ``main`` with the same error path as on the command line)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import mixedae.mm  # noqa: F401
from mixedae.mm.runner import adapt_to_machine
from mixedae.mm.smoke import tiny_det_config, tiny_seg_config

from mm_inproc import dump_config, run_tool
from conftest import data_dir


def random_checkpoint(cfg, path):
    """A checkpoint of the config's model with its initial weights, as mmengine saves one."""
    from mmengine.registry import MODELS, init_default_scope
    if cfg.default_scope == "mmseg":
        from mmseg.registry import DATASETS
    else:
        from mmdet.registry import DATASETS
    init_default_scope(cfg.default_scope)
    cfg = cfg.copy()
    adapt_to_machine(cfg, distributed=False)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    meta = DATASETS.get(cfg.test_dataloader.dataset.type).METAINFO
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": dict(meta)}},
               str(path))
    return path


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    ade = data_dir("ade_tiny")
    cfg = tiny_seg_config(ade)
    cfg.test_dataloader.dataset.indices = 2
    path = dump_config(tmp_path_factory, "seg", cfg)
    return path, random_checkpoint(cfg, path.with_suffix(".pth")), ade


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    coco = data_dir("coco_tiny")
    cfg = tiny_det_config(coco, val_images=2)
    path = dump_config(tmp_path_factory, "det", cfg)
    return path, random_checkpoint(cfg, path.with_suffix(".pth")), coco


@pytest.fixture
def tool():
    """tool("tools/test.py", *args) -> (result with returncode/stdout/stderr, stdout+stderr)."""
    def run(script, *args):
        r = run_tool(script, *args)
        return r, r.stdout + r.stderr
    return run


def test_tta_runs_the_tta_model(seg, tmp_path, tool):
    cfg, ckpt, _ = seg
    outs = {}
    for tta in (False, True):
        name = "tta" if tta else "single"
        r, log = tool("tools/test.py", cfg, ckpt, "--work-dir", tmp_path / name, "--out",
                      tmp_path / f"png_{name}", "--metrics-out", tmp_path / f"{name}.json",
                      *(["--tta"] if tta else []))
        assert r.returncode == 0, log[-4000:]
        from mmengine.config import Config
        ran = Config.fromfile(str(tmp_path / name / "seg.py"))   # the config the Runner used
        assert ran.model.type == ("SegTTAModel" if tta else "EncoderDecoder")
        m = json.loads((tmp_path / f"{name}.json").read_text())
        assert 0.0 <= m["mIoU"] <= 100.0
        outs[name] = [np.array(Image.open(p)) for p in sorted((tmp_path / f"png_{name}").glob("*.png"))]
    assert len(outs["tta"]) == len(outs["single"]) == 2
    assert all(a.shape == b.shape for a, b in zip(outs["tta"], outs["single"]))
    changed = np.mean([np.mean(a != b) for a, b in zip(outs["tta"], outs["single"])])
    print(f"TTA (2 scales x 2 flips) changed {changed:.1%} of the predicted pixels")
    assert changed > 0


def test_bad_test_flags_are_one_line(det, seg, tmp_path, tool):
    cfg, ckpt, _ = det
    r, _ = tool("tools/test.py", cfg, ckpt, "--out", tmp_path / "preds.json")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        f"error: --out {tmp_path / 'preds.json'}: mmdet predictions are a pickle; end it in .pkl"
    r, _ = tool("tools/test.py", cfg, ckpt, "--tta")
    assert r.returncode == 2 and "--tta is supported for mmseg" in r.stderr
    r, _ = tool("tools/test.py", seg[0], tmp_path / "missing.pth")
    assert r.returncode == 2 and r.stderr.strip() == \
        f"error: checkpoint not found: {tmp_path / 'missing.pth'}"


def test_det_show_dir_and_predictions_pickle(det, tmp_path, tool):
    cfg, ckpt, _ = det
    r, log = tool("tools/test.py", cfg, ckpt, "--work-dir", tmp_path / "wd", "--out",
                  tmp_path / "p.pkl", "--show-dir", tmp_path / "show")
    assert r.returncode == 0, log[-4000:]
    import pickle
    preds = pickle.loads((tmp_path / "p.pkl").read_bytes())
    assert len(preds) == 2 and all(len(p["pred_instances"]["scores"]) == 20 for p in preds)
    shown = sorted((tmp_path / "show").glob("*.jpg"))
    assert [p.name for p in shown] == sorted(p["img_path"].split("/")[-1] for p in preds)


def test_infer_segmentation_matches_the_test_path(seg, tmp_path, tool):
    cfg, ckpt, ade = seg
    img = sorted((ade / "images/validation").glob("*.jpg"))[0]
    r, log = tool("tools/infer.py", cfg, ckpt, img, "--out", tmp_path / "ov.png")
    assert r.returncode == 0, log[-3000:]
    assert "wrote" in r.stdout and '"task": "mmseg"' in r.stdout
    src, ov = np.array(Image.open(img).convert("RGB")), np.array(Image.open(tmp_path / "ov.png"))
    assert ov.shape == src.shape and np.mean(ov != src) > 0.5   # the blended label colours
    # the inference API (documented) predicts what tools/test.py --out wrote for that image
    from mmseg.apis import inference_model, init_model
    from mmengine.config import Config
    from mixedae.mm.inference import _prepare
    c = Config.fromfile(str(cfg))
    _prepare(c)
    pred = inference_model(init_model(c, str(ckpt), device="cpu"), str(img))
    r, log = tool("tools/test.py", cfg, ckpt, "--work-dir", tmp_path / "wd", "--out",
                  tmp_path / "png")
    assert r.returncode == 0, log[-3000:]
    png = np.array(Image.open(tmp_path / "png" / f"{img.stem}.png")).astype(np.int64)
    assert np.array_equal(pred.pred_sem_seg.data[0].numpy() + 1, png)


def test_infer_detection(det, tmp_path, tool):
    cfg, ckpt, coco = det
    img = sorted((coco / "images").glob("*.jpg"))[0]
    src = np.array(Image.open(img).convert("RGB"))
    r, log = tool("tools/infer.py", cfg, ckpt, img, "--out", tmp_path / "all.png",
                  "--score-thr", "0")
    assert r.returncode == 0, log[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    assert summary["task"] == "mmdet" and summary["detections"] == 20
    ov = np.array(Image.open(tmp_path / "all.png"))
    assert ov.shape == src.shape and np.any(ov != src)
    r, _ = tool("tools/infer.py", cfg, ckpt, img, "--out", tmp_path / "none.png",
                "--score-thr", "1.01")
    assert r.returncode == 0 and '"detections": 0' in r.stdout
    assert np.array_equal(np.array(Image.open(tmp_path / "none.png")), src)   # nothing drawn
    r, _ = tool("tools/infer.py", cfg, ckpt, tmp_path / "nope.jpg", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.strip() == f"error: image not found: {tmp_path / 'nope.jpg'}"


@pytest.mark.parametrize("task", ["seg", "det"])
def test_infer_on_an_image_of_odd_size(task, request, tmp_path, tool):
    """A 131x1003 photo: resized by the test pipeline to sides that are not multiples of 16
    (seg: 67 px wide, so the 128 px slide window is 67 px wide). The backbone pads it to whole
    patches as mmseg's ViT does (mmdet: the preprocessor pads to 32); the overlay has the
    image's own size."""
    cfg, ckpt, root = request.getfixturevalue(task)
    src = sorted(root.glob("images/**/*.jpg"))[0]
    img = tmp_path / "odd.jpg"
    Image.open(src).convert("RGB").resize((131, 1003)).save(img)
    r, log = tool("tools/infer.py", cfg, ckpt, img, "--out", tmp_path / "ov.png",
                  "--score-thr", "0")
    assert r.returncode == 0, log[-3000:]
    assert np.array(Image.open(tmp_path / "ov.png")).shape == (1003, 131, 3)
    if task == "seg":
        summary = json.loads(r.stdout.strip().splitlines()[-1].split(": ", 1)[1])
        assert tuple(summary["shape"]) == (1003, 131)
