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


# ---- python -m mixedae.mm.smoke: bad --base / data root refused before writing -----------------

def test_smoke_refuses_a_bad_base_or_the_wrong_data_root(tmp_path):
    from mm_inproc import run_tool
    ade, coco = data_dir("ade_tiny"), data_dir("coco_tiny")
    out = tmp_path / "t.py"

    def refused(*argv, want):
        r = run_tool("-m", "mixedae.mm.smoke", *argv)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        for w in want:
            assert w in lines[0], lines[0]
        assert not out.exists()   # nothing written
        return lines[0]

    # a typo in --base: the path and every valid base of the task
    refused("det", coco, out, "--base", "mmdet_configs/cascade-mask-rcnn_vit-b16_fnp.py",
            want=["mmdet_configs/cascade-mask-rcnn_vit-b16_fnp.py", "no such config",
                  "mmdet_configs/cascade-mask-rcnn_vit-b16_simplefpn_8xb2-amp-1x_coco.py"])
    # a base of the other library
    refused("seg", ade, out, "--base",
            str(REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"),
            want=["is an mmdet config", "needs an mmseg one",
                  "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"])
    # the ADE folder for det and the COCO folder for seg: what is missing, and the right task
    refused("det", ade, out, want=[str(ade), "annotations/instances_train2017.json",
                                   "use `smoke seg`"])
    refused("seg", coco, out, want=[str(coco), "images/training/", "use `smoke det`"])
    # images without annotation pairs
    bad = tmp_path / "ade_unpaired"
    for split in ("training", "validation"):
        (bad / "images" / split).mkdir(parents=True)
        (bad / "annotations" / split).mkdir(parents=True)
        (bad / "images" / split / "a.jpg").write_bytes(b"")
        (bad / "annotations" / split / "b.png").write_bytes(b"")
    refused("seg", bad, out, want=["images/training/NAME.jpg + annotations/training/NAME.png"])
    refused("seg", tmp_path / "nowhere", out, want=["nowhere is not a folder"])


def test_smoke_config_top_level_names_hold_what_it_runs(tmp_path):
    """The base configs' top-level names (data_root, crop_size, pipelines, ...) are shown first
    in a dump: in the written smoke config they are the values the config runs with."""
    from mm_inproc import run_tool
    from mmengine.runner import Runner
    import inspect
    runner_args = set(inspect.signature(Runner.__init__).parameters)
    read_by_tools = {"custom_imports", "tta_model", "tta_pipeline", "vis_backends"}
    for task, data in (("seg", data_dir("ade_tiny")), ("det", data_dir("coco_tiny"))):
        out = tmp_path / f"{task}.py"
        r = run_tool("-m", "mixedae.mm.smoke", task, data, out)
        assert r.returncode == 0, r.stderr
        cfg = Config.fromfile(str(out))
        loaders = [cfg[k].dataset for k in ("train_dataloader", "val_dataloader",
                                            "test_dataloader")]
        assert {d.data_root.rstrip("/") for d in loaders} == {str(data)}
        assert cfg.data_root.rstrip("/") == str(data)
        assert cfg.train_pipeline == cfg.train_dataloader.dataset.pipeline
        assert cfg.test_pipeline == cfg.val_dataloader.dataset.pipeline
        if task == "seg":
            crop = next(t.crop_size for t in cfg.train_pipeline if t.type == "RandomCrop")
            assert tuple(cfg.crop_size) == tuple(crop) == tuple(cfg.model.data_preprocessor.size)
            assert cfg.data_preprocessor == cfg.model.data_preprocessor
            w, h = next(t.scale for t in cfg.test_pipeline if t.type == "Resize")
            scales = [tuple(t.scale) for t in cfg.tta_pipeline[1].transforms[0]]
            assert scales == [(int(w * r), int(h * r)) for r in cfg.img_ratios]
        # every other top-level value is one the runner part of the config uses
        runner_part = str({k: v for k, v in cfg.items() if k in runner_args})
        for k, v in cfg.items():
            if k in runner_args or k in read_by_tools or k == "img_ratios":
                continue
            assert repr(v) in runner_part or str(v) in runner_part, (task, k, v)


# ---- tools outside the project's environment --------------------------------------------------

NO_TORCH_PYTHON = "/usr/bin/python3"


def _how(command: str) -> str:
    """What the error line proposes: the venv's python once it exists, else the set-up."""
    from mixedae.runtime.environment import VENV_PYTHON
    return command if VENV_PYTHON.exists() else "bash tools/setup_env.sh"


def _entry_tools():
    """tools/*.py that are commands and need torch (prepare_ade20k.py needs neither)."""
    return sorted(p.name for p in (REPO / "tools").glob("*.py")
                  if 'if __name__ == "__main__"' in p.read_text()
                  and p.name != "prepare_ade20k.py")


@pytest.fixture(scope="module")
def no_torch_python():
    import shutil
    if not shutil.which(NO_TORCH_PYTHON) or subprocess.run(
            [NO_TORCH_PYTHON, "-I", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"needs a Python without torch ({NO_TORCH_PYTHON} -I)")
    return NO_TORCH_PYTHON


def test_tools_outside_the_venv_say_how_to_run_them(no_torch_python):
    tools = _entry_tools()
    assert {"train.py", "test.py", "infer.py", "get_flops.py", "convert_checkpoint.py"} <= set(tools)
    for name in tools:
        r = run(no_torch_python, "-I", f"tools/{name}", "--help")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (name, r.stderr)
        assert "has no torch" in lines[0] and _how(f".venv/bin/python tools/{name}") in lines[0]
    r = run(no_torch_python, "-I", "tools/prepare_ade20k.py", "--help")   # needs no torch
    assert r.returncode == 0, r.stderr


def test_launchers_outside_the_venv_say_how_to_run_them(no_torch_python, tmp_path):
    import os
    cases = [("dist_train.sh", ["c.py", "2"]), ("dist_test.sh", ["c.py", "x.pth", "2"]),
             ("slurm_train.sh", ["p", "j", "c.py", "wd"]), ("slurm_test.sh", ["p", "j", "c.py", "x.pth"])]
    for script, argv in cases:
        for python, want in ((no_torch_python, "has no torch"),
                             (str(tmp_path / "nopython"), "is not a program on PATH")):
            r = subprocess.run(["bash", f"tools/{script}", *argv], capture_output=True, text=True,
                               cwd=REPO, env=dict(os.environ, PYTHON=python))
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, (script, r.stderr)
            assert want in lines[0] and "Error while finding module" not in r.stderr, lines
            if want == "has no torch":
                assert _how(f"PYTHON=.venv/bin/python bash tools/{script}") in lines[0], lines


# ---- tools/get_flops.py ------------------------------------------------------------------------

def test_get_flops_on_the_smoke_configs(tmp_path):
    import re
    from mmdet.registry import MODELS as DET
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS as SEG
    from mixedae.mm.smoke import tiny_det_config, tiny_seg_config
    from mm_inproc import run_tool

    def flops(cfg_path, *shape):
        r = run_tool("tools/get_flops.py", cfg_path, *(["--shape", *shape] if shape else []))
        assert r.returncode == 0, r.stderr[-3000:]
        out = r.stdout
        f = int(re.search(r"^Flops: \S+ \(([\d,]+)\)", out, re.M).group(1).replace(",", ""))
        p = int(re.search(r"^Params: \S+ \(([\d,]+),", out, re.M).group(1).replace(",", ""))
        mods = {m[0]: int(m[1].replace(",", ""))
                for m in re.findall(r"^  (\w+): \S+ \(([\d,]+)\)", out, re.M)}
        shape = tuple(int(v) for v in re.search(r"^Input shape: \((\d+), (\d+)\)", out,
                                                re.M).groups())
        return f, p, mods, shape, out

    def build(registry, path):   # the model, built independently of the tool
        with DefaultScope.overwrite_default_scope(registry.scope):
            return registry.build(Config.fromfile(str(path)).model)

    seg, det = tmp_path / "seg.py", tmp_path / "det.py"
    tiny_seg_config(data_dir("ade_tiny")).dump(str(seg))
    tiny_det_config(data_dir("coco_tiny")).dump(str(det))
    f1, p1, mods, shape, _ = flops(seg)   # default: the crop size
    assert shape == (128, 128)
    net = build(SEG, seg)
    assert mods == {n: sum(p.numel() for p in m.parameters()) for n, m in net.named_children()
                    if any(True for _ in m.parameters())}
    assert p1 == sum(p.numel() for p in net.parameters()) - mods["auxiliary_head"] > 0
    f2, p2, _, shape, _ = flops(seg, 128, 256)   # twice the pixels: about twice the FLOPs
    assert shape == (128, 256) and p2 == p1 and 1.9 * f1 < f2 < 2.5 * f1, (f1, f2)
    f3, p3, mods, shape, out = flops(det, 200, 300)   # padded to the multiple of 32
    assert shape == (224, 320) and "(200, 300) padded to (224, 320)" in out
    net = build(DET, det)
    assert p3 == sum(p.numel() for p in net.parameters()) == sum(mods.values()) and f3 > 0
    for bad in (["--shape", "0", "64"], ["--shape", "1", "2", "3"]):
        r = run_tool("tools/get_flops.py", seg, *bad)
        assert r.returncode == 2 and "--shape" in r.stderr and "Traceback" not in r.stderr


# ---- tools/train.py --auto-scale-lr --------------------------------------------------------------

def test_auto_scale_lr_scales_every_group_as_mmengine(tmp_path):
    """One training iteration with --auto-scale-lr: the saved optimizer's initial lrs are the
    config's (layer-decayed) lrs times total batch / base_batch_size = 2 / 16."""
    import torch
    from mixedae.mm.runner import build_runner, load_config
    from mixedae.mm.smoke import tiny_seg_config
    from mm_inproc import run_tool
    path = tmp_path / "seg.py"
    tiny_seg_config(data_dir("ade_tiny"), iters=1).dump(str(path))
    assert Config.fromfile(str(path)).auto_scale_lr.base_batch_size == 16
    no_val = ["val_cfg=None", "val_dataloader=None", "val_evaluator=None"]
    r = run_tool("tools/train.py", path, "--auto-scale-lr", "--from-scratch",
                 "--work-dir", tmp_path / "wd",
                 "--cfg-options", *no_val)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Scaling the original LR by 0.125" in r.stdout + r.stderr
    ckpt = torch.load(tmp_path / "wd/iter_1.pth", map_location="cpu", weights_only=False)
    scaled = [g["initial_lr"] for g in ckpt["optimizer"]["param_groups"]]
    runner = build_runner(load_config(str(path)), str(tmp_path / "wd2"))   # no flag
    wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    base = [g["lr"] for g in wrapper.optimizer.param_groups]
    assert len(set(base)) > 2   # layer decay: several lrs, each scaled
    assert scaled == pytest.approx([lr * 2 / 16 for lr in base], rel=1e-12)
    # a config without auto_scale_lr: one line, nothing run
    path2 = tmp_path / "seg2.py"
    cfg = Config.fromfile(str(path))
    cfg._cfg_dict.pop("auto_scale_lr")
    cfg.dump(str(path2))
    r = run_tool("tools/train.py", path2, "--auto-scale-lr", "--work-dir", tmp_path / "wd3")
    assert r.returncode == 2 and "auto_scale_lr.base_batch_size" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "wd3").exists()


def test_configs_auto_scale_lr_base_is_the_reference_total_batch():
    """BEiT ADE20K and iBOT COCO: 8 GPUs x 2 images = 16."""
    for path in [*REPO.glob("mmseg_configs/*.py"), *REPO.glob("mmdet_configs/*.py")]:
        cfg = Config.fromfile(str(path))
        assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16), path
        assert "8xb2" in path.name and cfg.train_dataloader.batch_size == 2


# ---- issue 19: the mm tools share run_main's error path ---------------------------------------
def test_mm_tool_bad_input_is_one_line_and_a_bug_says_so(tmp_path, monkeypatch):
    """Bad input to an mm tool (missing config, a --cfg-options key that cannot apply, a
    config type no registry holds, an argument the class does not take) is one line, exit 2;
    an exception of another type from our code (here a KeyError, which the old wrapper
    reported as bad input) is a bug: one line saying so, exit 1, the traceback with --debug."""
    import mixedae.mm.runner as mm_runner
    from mixedae.mm.smoke import tiny_seg_config
    from mm_inproc import run_tool
    seg = tmp_path / "seg.py"
    tiny_seg_config(data_dir("ade_tiny")).dump(str(seg))

    def one_line(r, *needles, code=2):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == code and len(lines) == 1, r.stderr[-3000:]
        assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
        for n in needles:
            assert n in lines[0], lines[0]

    wd = tmp_path / "wd"
    one_line(run_tool("tools/train.py", tmp_path / "nope.py", "--from-scratch", "--work-dir", wd),
             f"config not found: {tmp_path / 'nope.py'}")
    one_line(run_tool("tools/train.py", seg, "--from-scratch", "--work-dir", wd,
                      "--cfg-options", "model.backbone.arch.depth=3"),
             "--cfg-options: arch={'depth': 3} in child config cannot inherit")
    one_line(run_tool("tools/get_flops.py", seg, "--cfg-options", "model.decode_head.type=UperHaed"),
             "type 'UperHaed' is not in the mmseg::model registry")
    one_line(run_tool("tools/get_flops.py", seg, "--cfg-options", "model.backbone.out_indice=3"),
             "config: MixedAEViT: got an unexpected keyword argument 'out_indice'")
    assert not wd.exists()

    def broken(*a, **k):
        raise KeyError("model")
    monkeypatch.setattr(mm_runner, "load_config", broken)
    one_line(run_tool("tools/get_flops.py", seg),
             "internal error (a bug, please report): KeyError: 'model'; rerun with --debug",
             code=1)
    with pytest.raises(KeyError, match="model"):
        run_tool("tools/get_flops.py", seg, "--debug")
