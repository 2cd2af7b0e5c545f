"""A newcomer's path: --pretrained weights that do not fit the config get the exact
--cfg-options printed (or applied with --match-pretrained); feature strides that do not fit
the heads are refused; big configs on CPU warn; the docs use the project's interpreter and
point at the tiny configs."""
import argparse
import json
import re
import shlex

import pytest
import torch
from mmengine.config import Config, DictAction
from safetensors.torch import load_file, save_file

import mixedae.mm  # noqa: F401
from mixedae.mm import preflight
from mixedae.mm.pretrained import checkpoint_vit, match_pretrained
from mixedae.mm.smoke import tiny_det_config
from mixedae.model.vit import create_vit

from conftest import REPO, data_dir
from mm_inproc import run_tool as tool

SEG_B = REPO / "mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"
DET_B = REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"
DET_SFPN = REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_simplefpn_8xb2-amp-1x_coco.py"


def demo_like_run(tmp_path, arch="micro", patch=8, img=32, metadata=True):
    """A pretraining run dir like `mixedae demo` writes (there: tiny, patch 8, 64 px)."""
    torch.manual_seed(0)
    enc = create_vit(arch, patch_size=patch, img_size=img)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd["decoder.embed.weight"] = torch.randn(32, enc.embed_dim)
    run = tmp_path / f"run_{arch}_{patch}"
    run.mkdir()
    meta = {"config": json.dumps({"model": arch, "patch_size": patch, "img_size": img})}
    save_file(sd, str(run / "model.safetensors"), metadata=meta if metadata else None)
    return run


def parse_options(line: str) -> dict:
    """The --cfg-options part of the error line, parsed as the shell + mmengine would."""
    words = shlex.split(line.split("rerun with ", 1)[1].split(" (or add", 1)[0])
    assert words[0] == "--cfg-options"
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg-options", nargs="+", action=DictAction)
    return ap.parse_args(words).cfg_options


def build_and_load(cfg: Config, run) -> torch.nn.Module:
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.default_scope)
    bb = MODELS.build(dict(cfg.model.backbone, norm_cfg=dict(type="BN"),
                           init_cfg=dict(type="Pretrained", checkpoint=str(run))))
    bb.init_weights()   # the backbone's checked loader: any mismatch raises
    return bb


def test_train_prints_the_exact_cfg_options(tmp_path):
    run = demo_like_run(tmp_path)
    r = tool("tools/train.py", SEG_B, "--pretrained", run, "--work-dir", tmp_path / "wd")
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    assert "ViT-micro/8 (64 wide, 4 blocks; size name from its metadata) but the config builds " \
        "a ViT-base/16 (768 wide, 12 blocks)" in line
    opts = parse_options(line)
    assert opts == {"model.backbone.arch": "micro", "model.backbone.patch_size": 8,
                    "model.backbone.out_indices": (0, 1, 2, 3),
                    "model.decode_head.in_channels": [64, 64, 64, 64],
                    "model.auxiliary_head.in_channels": 64}
    cfg = Config.fromfile(str(SEG_B))
    cfg.merge_from_dict(opts)
    bb = build_and_load(cfg, run)   # the printed options make the weights load
    assert bb.patch_size == 8 and bb.out_strides == (4, 8, 16, 32)


@pytest.mark.parametrize("config", [DET_B, DET_SFPN], ids=["fpn", "simplefpn"])
def test_det_options_follow_the_neck(tmp_path, config):
    run = demo_like_run(tmp_path, arch="micro", patch=8, metadata=False)   # from the weights
    assert checkpoint_vit(str(run)).source == "weights"
    cfg = Config.fromfile(str(config))
    opts = match_pretrained(cfg, str(run), apply=True)
    if config == DET_SFPN:
        assert opts["model.neck.in_channels"] == 64 and opts["model.neck.in_stride"] == 8
        assert opts["model.backbone.out_indices"] == (3,)
    else:
        assert opts["model.neck.in_channels"] == [64] * 4
    assert preflight.check_strides(cfg) == (4, 8, 16, 32)
    build_and_load(cfg, run)
    assert match_pretrained(cfg, str(run)) == {}   # now it fits: nothing to say


def test_metadata_contradicting_weights_is_refused(tmp_path):
    run = demo_like_run(tmp_path)
    tensors = load_file(str(run / "model.safetensors"))
    save_file(tensors, str(run / "model.safetensors"),
              metadata={"config": json.dumps({"model": "micro", "patch_size": 16})})
    with pytest.raises(ValueError, match="metadata says patch_size=16 but"):
        checkpoint_vit(str(run))


def test_stride_mismatches_are_refused():
    cfg = Config.fromfile(str(DET_B))
    cfg.model.roi_head.bbox_roi_extractor.featmap_strides = [2, 4, 8, 16]
    with pytest.raises(ValueError, match=r"bbox_roi_extractor.featmap_strides=\[2, 4, 8, 16\] "
                                         r"but the backbone .* strides \[4, 8, 16, 32\]"):
        preflight.check_strides(cfg)
    cfg = Config.fromfile(str(DET_SFPN))
    cfg.model.backbone.patch_size = 8   # the neck still assumes stride-16 input
    with pytest.raises(ValueError, match=r"model.neck.in_stride=16 but model.backbone.patch_size=8"):
        preflight.check_strides(cfg)
    cfg = Config.fromfile(str(DET_B))
    cfg.model.backbone.patch_size = 14
    with pytest.raises(ValueError, match="14 cannot give out_strides"):
        preflight.check_strides(cfg)


def test_match_pretrained_trains_patch8_detection(tmp_path):
    """--match-pretrained on the tiny det config with a patch-8 run: 1 iteration, 1 val image."""
    coco = data_dir("coco_tiny")
    run = demo_like_run(tmp_path, arch="micro", patch=8)
    cfg_path = tmp_path / "det.py"
    tiny_det_config(coco, iters=1, val_images=1).dump(str(cfg_path))
    r = tool("tools/train.py", cfg_path, "--pretrained", run, "--match-pretrained",
             "--work-dir", tmp_path / "wd")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "MixedAEViT: loaded" in log and "warning: no CUDA" not in log
    assert (tmp_path / "wd/iter_1.pth").is_file()
    from mixedae.runtime.provenance import checkpoint_record  # with mmengine's real Runner
    assert json.loads((tmp_path / "wd/pretrained.json").read_text()) == checkpoint_record(run)


def test_cpu_warning_threshold():
    big = torch.nn.Linear(4000, 3000)   # 12 M parameters
    msg = preflight.cpu_warning(big, cuda=False)
    assert msg and "12 M parameters" in msg and "mixedae.mm.smoke" in msg
    assert preflight.cpu_warning(big, cuda=True) is None
    assert preflight.cpu_warning(torch.nn.Linear(100, 100), cuda=False) is None


def test_docs_use_the_project_interpreter_and_the_smoke_configs():
    text = (REPO / "docs/transfer.md").read_text()
    bare = [m.group(0) for m in re.finditer(r"(?m)^\s*(python|python3) \S+", text)]
    assert not bare, bare
    assert ".venv/bin/python -m mixedae.mm.smoke seg" in text
    assert ".venv/bin/python -m mixedae.mm.smoke det" in text
    r = tool("-m", "mixedae.mm.smoke", "--help")
    assert r.returncode == 0 and "--base" in r.stdout


def test_production_config_on_cpu_warns_before_training(tmp_path, capsys):
    """build_runner (what tools/train.py and test.py call) warns once the model is built."""
    if torch.cuda.is_available():
        pytest.skip("the warning is for CPU-only machines")
    from mixedae.mm.runner import build_runner, load_config
    cfg = load_config(str(SEG_B), {"experiment_name": f"warn_{tmp_path.name}"})
    build_runner(cfg, str(tmp_path / "wd"), "none", str(SEG_B))
    out = capsys.readouterr()
    assert "warning: no CUDA and the model has 1" in out.out + out.err   # 1xx M parameters
