"""docs/transfer.md's smoke sequence, run verbatim: the commands of its "Try everything in
minutes" block are parsed from the doc and run in order (in-process, tests/mm/mm_inproc.py) in a
fresh folder; only the data folder and `outputs/demo` (a tiny patch-8 pretraining run made
here, as `mixedae demo` writes one) are substituted. Train with --match-pretrained, then
tools/test.py and tools/infer.py with the same config must run on what training wrote, and
must not overwrite the training run's files."""
import re
import shlex

from mmengine.config import Config

from conftest import REPO, data_dir
from mm_inproc import run_tool
from test_mm_newcomer import demo_like_run


def doc_commands(section: str = "## Try everything in minutes on the tiny data") -> list[list[str]]:
    text = (REPO / "docs/transfer.md").read_text()
    block = text.split(section, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    cmds = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            cmds.append(shlex.split(line))
    return cmds


def test_the_documented_smoke_sequence_runs_verbatim(tmp_path, monkeypatch):
    cmds = doc_commands()
    assert [c[:2] for c in cmds][:3] == [[".venv/bin/python", "-m"]] * 2 + [
        [".venv/bin/python", "tools/train.py"]]
    train = next(c for c in cmds if c[1] == "tools/train.py")
    assert "--match-pretrained" in train and "outputs/demo" in train
    assert any(c[1] == "tools/test.py" for c in cmds) and any(c[1] == "tools/infer.py"
                                                              for c in cmds)
    data = str(data_dir("ade_tiny").parent)
    run = demo_like_run(tmp_path)                     # ViT-micro/8: the config builds /16
    monkeypatch.chdir(tmp_path)
    for cmd in cmds:
        assert cmd[0] == ".venv/bin/python", cmd      # every command uses the interpreter
        argv = [a.replace("../shared/data", data).replace("outputs/demo", str(run))
                for a in cmd[1:]]
        r = run_tool(*argv)
        assert r.returncode == 0, (cmd, (r.stdout + r.stderr)[-4000:])
    # training's own config copy is what it ran (patch 8), not overwritten by tools/test.py
    dumped = Config.fromfile(str(tmp_path / "work_dirs/seg_tiny/seg_tiny.py"))
    assert dumped.model.backbone.patch_size == 8
    # tools/test.py ran the model the checkpoint holds (its own dump, beside, not over it)
    tested = Config.fromfile(str(tmp_path / "work_dirs/seg_tiny/test/seg_tiny.py"))
    assert tested.model.backbone.patch_size == 8
    assert list((tmp_path / "vis").rglob("*.png")) and (tmp_path / "overlay.png").stat().st_size


def test_a_checkpoint_from_before_keeps_testing_as_it_ran(tmp_path):
    """A COCO checkpoint trained when the config stored the position embedding at 14x14
    (img_size 224) is tested at that grid, not resized to today's 42x68; relative tables
    follow the checkpoint too."""
    import torch
    from mixedae.mm.backbone import MixedAEViT
    from mixedae.mm.pretrained import checkpoint_options
    cfg = Config.fromfile(str(REPO / "mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"))
    cfg.model.backbone.update(arch="micro", out_indices=(0, 1, 2, 3))   # a small stand-in
    assert cfg.model.backbone.img_size == (672, 1092)
    for img, rel, want in [(224, False, {"model.backbone.img_size": 224}),
                           ((672, 1092), False, {}),
                           ((672, 1092), True, {"model.backbone.use_rel_pos_bias": True})]:
        bb = MixedAEViT(arch="micro", out_indices=(0, 1, 2, 3), img_size=img,
                        use_rel_pos_bias=rel, norm_cfg=dict(type="BN"))
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in bb.state_dict().items()}},
                   str(tmp_path / "ckpt.pth"))
        assert checkpoint_options(cfg, str(tmp_path / "ckpt.pth")) == want, (img, rel)
