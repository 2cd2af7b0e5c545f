"""``mixedae pipeline`` end to end on CPU on the small real data (micro ViT, a few steps per
stage): pretraining → conversion → transfers → report; finished stages are skipped on a rerun,
a failed stage is named with its log and the report still shows what exists. The mm run is
also the end-to-end test of tools/train.py and tools/test.py on ADE20K and COCO."""
import contextlib
import io
import json
import math
import re
import subprocess
import sys

import pytest

from mixedae import cli
from mixedae.pipeline.main import main as pipeline

from conftest import data_dir

PRETRAIN = ("--model micro --img-size 64 --patch-size 16 --mask-patch-size 32 --batch-size 16 "
            "--max-steps 4 --log-every 2 --num-workers 0 --device cpu")
CLS_ARGS = "--iters 4 --lrs 0.01 --img-size 64 --batch-size 16 --workers 0"


def base_argv(out, transfers, **paths):
    argv = ["--preset", "mixedae_tiny", "--data", str(data_dir("imagenet_tiny")),
            "--out", str(out), "--pretrain-args", PRETRAIN, "--transfers", transfers,
            "--report-args", "--num-images 4"]
    for flag, value in paths.items():
        argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv


def mm_available() -> str | None:
    r = subprocess.run([sys.executable, "-c", "import mmcv.ops, mmseg, mmdet"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


class Run:
    """The one pipeline run the end-to-end tests below share (its argv, folder, what it
    printed and the report as first written)."""

    def __init__(self, argv, out, printed, mm):
        self.argv, self.out, self.printed, self.mm = argv, out, printed, mm
        self.report_md = (out / "report" / "report.md").read_text()
        self.stages = sorted(p.stem for p in (out / "stages").glob("*.json"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """pretrain → convert → cls11 (CIFAR-10) → ade → coco → report, once for this module: the
    mm stages are real mmengine Runners (mmseg IoUMetric, mmdet CocoMetric with pycocotools),
    so this is also the project's end-to-end test of tools/train.py and tools/test.py."""
    why = mm_available()
    out = tmp_path_factory.mktemp("pipeline") / "p"
    paths = dict(cls_root=data_dir("cls_tiny"), cls_datasets="cifar10", cls_args=CLS_ARGS)
    if not why:
        paths.update(ade_data=data_dir("ade_tiny"), coco_data=data_dir("coco_tiny"))
    argv = base_argv(out, "cls11" if why else "cls11,ade,coco", **paths)
    argv += [] if why else ["--mm-configs", "smoke"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = pipeline(argv)
    assert rc == 0, buf.getvalue()[-3000:]
    return Run(argv, out, buf.getvalue(), mm=why)


def need_mm(run):
    if run.mm:
        pytest.skip(f"mm stages need mmcv ops / mmseg / mmdet ({run.mm}); "
                    f"tools/setup_env.sh builds mmcv last")


def test_pipeline_cls11_resume_and_failure(run, capsys):
    out = run.out
    assert run.stages == sorted(["pretrain", "convert", "cls11", "report"]
                                + ([] if run.mm else ["ade", "coco"]))
    for stage in run.stages:
        assert json.loads((out / "stages" / f"{stage}.json").read_text())["stage"] == stage
    c10 = float(next(r for r in (out / "cls11" / "results.csv").read_text().splitlines()[1:]
                     ).split(",")[4])
    md = run.report_md
    assert md.startswith("# MixedAE report: p\n")
    assert re.search(rf"\| p \| this run \(measured\) \| 1/11 datasets \|[^\n]* {c10:.1f} \|", md)
    assert "| [TopK sampling accuracy (Fig. 6)](#topk-sampling-accuracy-fig-6) | present |" in md
    assert "report: " + str(out / "report" / "report.html") in run.printed

    # a rerun skips every finished stage
    assert pipeline(run.argv) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == len(run.stages)
    # changed settings of a finished stage are refused before any work ...
    bad = [a + " --iters 0" if a == CLS_ARGS else a for a in run.argv]
    assert pipeline(bad) == 2
    assert "stage 'cls11' was finished with other settings (args)" in capsys.readouterr().err
    # ... and with --redo the failing stage is named with its log; the report is still written
    assert pipeline(bad + ["--redo", "cls11"]) == 1
    printed = capsys.readouterr().out
    log = out / "logs" / "cls11.log"
    assert f"stage 'cls11' failed (exit code 2); log: {log}" in printed
    assert "--iters 0: must be > 0" in log.read_text()
    assert (out / "cls11.prev-1" / "results.csv").is_file()   # the finished output is kept
    md = (out / "report" / "report.md").read_text()
    assert re.search(r"\| \[11 downstream[^|]*\]\(#[^)]*\) \| missing \|", md)


def scalars(work_dir):
    files = sorted(work_dir.glob("*/vis_data/scalars.json"))
    assert files, f"no scalars.json under {work_dir}"
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def check_training(records, iters):
    """Every training iteration logged once, every loss term finite."""
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, iters + 1))
    for r in train:
        for k, v in r.items():
            if k.startswith("loss") or ".loss" in k:
                assert math.isfinite(v), (k, v)
    return train


def test_pipeline_mm_stages(run):
    need_mm(run)
    out = run.out
    seg = json.loads((out / "ade" / "test_metrics.json").read_text())
    det = json.loads((out / "coco" / "test_metrics.json").read_text())
    assert 0 <= seg["mIoU"] <= 100 and 0 <= det["coco/bbox_mAP"] <= 1
    md = run.report_md
    assert f"| p | this run (measured) | ade_tiny | {seg['mIoU']:.1f} |" in md
    assert f"| p | this run (measured) | coco_tiny | {100 * det['coco/bbox_mAP']:.1f} |" in md
    assert f"{out / 'ade'}: tools/test.py on the final checkpoint; 6 training" in md
    convert = (out / "logs" / "convert.log").read_text()
    assert "dropped: decoder" in convert and "projector" in convert


def test_upernet_on_ade_tiny(run, capsys):
    """tools/train.py → UperNet from the converted backbone, 6 iterations with validation;
    tools/test.py on the saved checkpoint reproduces the validation mIoU; the Runner
    checkpoint converts back to the project's encoder."""
    need_mm(run)
    log = (run.out / "logs" / "ade.log").read_text()
    assert "MixedAEViT: loaded" in log and "SyncBN" in log
    assert "warning: no CUDA" not in log   # the tiny configs are fine on CPU
    recs = scalars(run.out / "ade")
    check_training(recs, 6)
    val = [r for r in recs if "mIoU" in r]
    assert val and 0.0 <= val[-1]["mIoU"] <= 100.0
    test = json.loads((run.out / "ade" / "test_metrics.json").read_text())
    assert abs(test["mIoU"] - val[-1]["mIoU"]) < 1e-6
    ckpt, back = run.out / "ade" / "iter_6.pth", run.out.parent / "back.safetensors"
    assert cli.main(["convert", str(ckpt), str(back), "--to", "vit"]) == 0
    printed = capsys.readouterr().out
    assert "(mm, ViT-micro)" in printed and "task heads / neck" in printed


def test_cascade_mask_rcnn_on_coco_tiny(run):
    """tools/train.py → Cascade Mask R-CNN, 4 iterations, every loss of the three stages and
    the RPN logged; bbox and segm AP from pycocotools in range; tools/test.py on iter_4."""
    need_mm(run)
    recs = scalars(run.out / "coco")
    train = check_training(recs, 4)
    assert all(k in train[-1] for k in ("loss_rpn_cls", "s0.loss_cls", "s2.loss_bbox",
                                        "s0.loss_mask"))
    val = [r for r in recs if "coco/bbox_mAP" in r]
    assert val, recs[-1]
    for k in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert 0.0 <= val[-1][k] <= 1.0, (k, val[-1][k])
    assert (run.out / "coco" / "iter_4.pth").is_file()
    test = json.loads((run.out / "coco" / "test_metrics.json").read_text())
    assert "coco/segm_mAP" in test and "coco/bbox_mAP" in test


@pytest.mark.parametrize("extra,msg", [
    (["--transfers", "ade,nope"], "--transfers: unknown ['nope']"),
    (["--transfers", "ade"], "--ade-data is required"),
    (["--transfers", "coco", "--coco-data", "/nonexistent"], "--coco-data /nonexistent: no such"),
    (["--pretrain-args", "--mix-ratio 0.3"], "1/r=3.33333 must be an integer"),
    (["--pretrain-args", "--nope 1"], "unrecognized arguments: --nope 1"),
    (["--gpus", "0"], "--gpus 0 must be >= 1"),
    (["--redo", "ade"], "--redo: no stage ['ade']"),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, extra, msg):
    argv = ["--preset", "mixedae_tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
            *extra]
    assert pipeline(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "o").exists()


def test_smoke_configs_need_micro_and_dry_run_on_gpus(tmp_path, capsys):
    argv = ["--preset", "mixedae_tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
            "--transfers", "ade,cls11", "--ade-data", str(tmp_path), "--cls-root",
            str(tmp_path), "--mm-configs", "smoke"]
    assert pipeline(argv) == 2
    assert "ViT-micro" in capsys.readouterr().err
    argv[argv.index("--mm-configs")] = "--gpus"
    argv[argv.index("smoke")] = "4"
    assert pipeline(argv + ["--pretrain-args", "--model base", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [ln for ln in out if ln.startswith("[")]
    assert [ln.split(":")[0] for ln in lines] == ["[run] pretrain", "[run] convert", "[run] ade",
                                                  "[run] cls11", "[run] report"]
    assert out[1] == "    estimate: unknown (no images counted in --data)"  # empty --data
    assert out.count("    estimate: not modelled (see the transfer's own iterations / epochs)") == 2
    assert "torch.distributed.run --standalone --nproc_per_node=4 -m mixedae.cli pretrain" \
        in lines[0]
    assert "tools/dist_train.sh" in lines[2] and "upernet_vit-b16" in lines[2]
    assert "--launcher pytorch" in lines[2] and f"data_root={tmp_path}" in lines[2]
    assert not (tmp_path / "o").exists()


def test_dry_run_estimates_the_pretraining_time(tmp_path, capsys):
    """The documented cost model (pipeline/estimate.py) reproduces the paper's V100 GPU-days
    (Tables 1, 6) within 10 %, and --dry-run prints its estimate for the chosen device."""
    from mixedae.pipeline.estimate import RATE, pretrain_steps, units_per_image
    from mixedae.pretrain.config import get_preset
    for preset, epochs, days in (("mixedae_base", 300, 16.9), ("mixedae_base_full", 300, 62.3),
                                 ("mixedae_large", 1600, 170.4)):
        cfg = get_preset(preset, epochs=epochs)
        sec = pretrain_steps(cfg, 1_281_167, None) * cfg.batch_size * units_per_image(cfg)
        assert sec * RATE["cuda"] / 86400 == pytest.approx(days, rel=0.1), preset
    argv = base_argv(tmp_path / "o", "") + ["--dry-run"]
    assert pipeline(argv) == 0
    est = capsys.readouterr().out.splitlines()[1]
    assert re.fullmatch(r"    estimate: 4 steps × 16 images, ViT-micro/16 at 64 px, compose "
                        r"mixing: ~\d+ s on 1 CPU core \(measured on one CPU core .*\)", est), est
    assert not (tmp_path / "o").exists()


def test_stage_progress_shows_position_elapsed_and_the_stage_log(tmp_path):
    from mixedae.pipeline import stages as S
    assert S.log_tail(_write(tmp_path / "t.log", "=== $ cmd\nx  10%|#  | 1/10\r x  20%|## | 2/10"
                             "\r")) == "x  20%|## | 2/10"
    shown = []
    code = ("import time; print('step 1 of 2', flush=True); time.sleep(0.6); "
            "print('step 2 of 2', flush=True); time.sleep(0.3)")
    runner = S.Runner(tmp_path / "o", set(), echo=shown.append, every_s=0, poll_s=0.1)
    runner.position = "2/3"
    stage = S.Stage("a", {}, [lambda: [S.python(), "-c", code]], output=tmp_path / "o" / "a")
    assert runner.run(stage)
    assert shown[0] == f"[pipeline] stage 2/3 a: running (log: {tmp_path / 'o' / 'logs' / 'a.log'})"
    progress = [ln for ln in shown[1:-1]]
    assert progress and all(re.fullmatch(r"\[pipeline\] stage 2/3 a: 0:0\d( \| step [12] of 2)?",
                                         ln) for ln in progress), progress
    assert any(ln.endswith("| step 1 of 2") for ln in progress)
    assert shown[-1].startswith("[pipeline] a: done in")


def _write(path, text):
    path.write_text(text)
    return path
