"""Which checkpoint produced a result: ``mixedae finetune`` / ``linprobe`` / ``knn`` write the
``runtime.provenance`` record of their ``--checkpoint`` file into result.json (null without
one), ``tools/train.py`` into ``<work_dir>/pretrained.json``; ``mixedae report`` credits a result
to the run only when that record is the run's weights, and labels each by its dataset."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from mixedae.classification import finetune as F
from mixedae.classification import knn as K
from mixedae.classification import linprobe as L
from mixedae.pretrain.config import get_preset
from mixedae.report.main import main as report_main
from mixedae.runtime.provenance import checkpoint_record

from conftest import data_dir
from test_transfer import write_pretrain_checkpoint

TINY = ["--val-folder", "test", "--model", "micro", "--patch-size", "8", "--img-size", "32",
        "--batch-size", "16", "--workers", "0", "--no-progress", "--eval-batch-size", "500"]
MICRO = ["--model", "micro", "--patch-size", "8", "--img-size", "32", "--workers", "0",
         "--no-progress"]

pytestmark = pytest.mark.usefixtures("single_thread")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain_run(path, seed: int):
    """A pretraining run folder: its weights and a config.json (as the report reads one)."""
    ck = write_pretrain_checkpoint(path, img_size=32, seed=seed)
    (path / "config.json").write_text(get_preset("mixedae_base").to_json())
    return ck


def finetune(out, *extra) -> dict:
    assert F.main(["--data", str(data_dir("cls_tiny") / "cifar10"), *TINY, "--output-dir",
                   str(out), "--max-steps", "1", *extra]) == 0
    return json.loads((out / "result.json").read_text())


def test_finetune_result_records_the_checkpoint_file(tmp_path):
    ck = pretrain_run(tmp_path / "run", seed=1)
    res = finetune(tmp_path / "ft", "--checkpoint", str(tmp_path / "run"))  # the run dir
    rec = res["pretrained"]
    assert rec["sha256"] == sha(ck) and rec["size"] == ck.stat().st_size
    assert rec["path"] == str(ck.resolve())      # the folder stands for its weights file
    # the resumable checkpoint keeps it: a resume records what the run started from, even if
    # --checkpoint now names other weights (the resumed weights replace them)
    other = write_pretrain_checkpoint(tmp_path / "other", img_size=32, seed=2)
    again = finetune(tmp_path / "ft", "--checkpoint", str(other), "--resume", "auto",
                     "--max-steps", "2")
    assert again["step"] == 2 and again["pretrained"] == rec
    assert finetune(tmp_path / "scratch")["pretrained"] is None  # random initialisation


def test_linprobe_and_knn_results_record_the_checkpoint(tmp_path):
    ck = write_pretrain_checkpoint(tmp_path / "pt", img_size=32)
    root = ["--datasets", "caltech101", "--root", str(data_dir("cls_tiny"))]
    assert L.main([*root, *MICRO, "--checkpoint", str(ck), "--output-dir", str(tmp_path / "l"),
                   "--batch-size", "64", "--epochs", "1", "--warmup-epochs", "0",
                   "--max-steps", "1"]) == 0
    part = json.loads((tmp_path / "l" / "caltech101" / "result.json").read_text())
    assert part["finished"] is False and part["pretrained"]["sha256"] == sha(ck)  # partial too
    assert K.main([*root, *MICRO, "--checkpoint", str(ck), "--nb-knn", "5",
                   "--output-dir", str(tmp_path / "k")]) == 0
    ds = tmp_path / "k" / "caltech101"
    for f in (ds / "result.json", ds / "k5" / "result.json"):
        assert json.loads(f.read_text())["pretrained"]["sha256"] == sha(ck), f
    assert K.main([*root, *MICRO, "--nb-knn", "5", "--output-dir", str(tmp_path / "k0")]) == 0
    assert json.loads((tmp_path / "k0" / "caltech101" / "result.json").read_text())[
        "pretrained"] is None


# ---- tools/train.py ----------------------------------------------------------------------
class FakeRunner:
    """Stands in for mmengine's Runner: records that training was reached, trains nothing."""

    def __init__(self, work_dir):
        self.work_dir = str(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)

    def train(self):
        self.trained = True


@pytest.fixture
def train_tool(tmp_path_factory, monkeypatch):
    """``tools/train.py`` on the tiny segmentation config, up to the Runner's ``train``."""
    import mixedae.mm.runner as mm_runner
    from mixedae.mm.smoke import tiny_seg_config
    from mm_inproc import dump_config, run_tool
    cfg = dump_config(tmp_path_factory, "seg", tiny_seg_config(data_dir("ade_tiny")))
    monkeypatch.setattr(mm_runner, "build_runner",
                        lambda c, work_dir, *a, **k: FakeRunner(Path(work_dir)))

    def run(work_dir, *argv):
        r = run_tool("tools/train.py", cfg, "--work-dir", work_dir, *argv)
        assert r.returncode == 0, r.stderr
    return run


def test_train_tool_writes_the_record_of_the_weights_it_starts_from(tmp_path, train_tool):
    from test_mm_newcomer import demo_like_run
    run = demo_like_run(tmp_path, patch=16)
    wd = tmp_path / "wd"
    train_tool(wd, "--pretrained", run)
    rec = json.loads((wd / "pretrained.json").read_text())
    assert rec["sha256"] == sha(run / "model.safetensors") and rec == checkpoint_record(run)
    # a resumed run keeps the record of its first run (the resumed weights are that run's)
    (wd / "last_checkpoint").write_text(str(wd / "iter_2.pth"))
    (tmp_path / "o").mkdir()
    other = demo_like_run(tmp_path / "o", patch=16)
    train_tool(wd, "--pretrained", other, "--resume")
    assert json.loads((wd / "pretrained.json").read_text()) == rec
    # the config's own checkpoint (load_from: the whole model) and random initialisation
    full = tmp_path / "full.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}}, full)
    train_tool(tmp_path / "wd2", "--cfg-options", f"load_from={full}")
    assert json.loads((tmp_path / "wd2" / "pretrained.json").read_text())["sha256"] == sha(full)
    train_tool(tmp_path / "wd3", "--from-scratch")
    assert json.loads((tmp_path / "wd3" / "pretrained.json").read_text()) is None


# ---- mixedae report ------------------------------------------------------------------------
def test_report_credits_only_results_of_the_runs_weights(tmp_path, train_tool):
    """One result per producer from the run's weights and one from other weights: only the
    first is "this run", each row names its data; no record or a null one is not credited."""
    run, other, t = tmp_path / "run", tmp_path / "other", tmp_path / "t"
    pretrain_run(run, seed=1)
    foreign = pretrain_run(other, seed=2)
    finetune(t / "ft_mine", "--checkpoint", str(run))
    finetune(t / "ft_theirs", "--checkpoint", str(foreign))
    finetune(t / "ft_scratch")
    for name, weights in (("ade_mine", run), ("ade_theirs", other)):  # mm work dirs
        train_tool(t / name, "--pretrained", weights, "--match-pretrained")
        (t / name / "test_metrics.json").write_text(json.dumps({"mIoU": 3.5}))
    # a pipeline's mm stage: tools/train.py got the convert stage's copy (other bytes); the
    # stage marker records the run's weights the pipeline handed it
    pipe = tmp_path / "pipe"
    train_tool(pipe / "ade", "--pretrained", foreign, "--match-pretrained")
    (pipe / "ade" / "test_metrics.json").write_text(json.dumps({"mIoU": 5.5}))
    (pipe / "stages").mkdir()
    (pipe / "stages" / "ade.json").write_text(json.dumps({"pretrained": checkpoint_record(run)}))
    (t / "ade_norecord").mkdir()
    (t / "ade_norecord" / "test_metrics.json").write_text(json.dumps({"mIoU": 4.5}))
    assert K.main(["--datasets", "caltech101", "--root", str(data_dir("cls_tiny")), *MICRO,
                   "--checkpoint", str(foreign), "--nb-knn", "5", "--output-dir",
                   str(t / "knn_theirs")]) == 0
    assert L.main(["--datasets", "caltech101", "--root", str(data_dir("cls_tiny")), *MICRO,
                   "--checkpoint", str(run), "--output-dir", str(t / "lin"), "--batch-size",
                   "64", "--epochs", "1", "--warmup-epochs", "0", "--max-steps", "1"]) == 0
    assert report_main([str(run), *(str(p) for p in sorted(t.iterdir())), str(pipe),
                        "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| run | this run (measured) | cifar10 (not ImageNet-1K) |" in md
    assert "| ft_theirs | another checkpoint (measured) | cifar10 (not ImageNet-1K) |" in md
    assert "| ft_scratch | no checkpoint (measured) | cifar10 (not ImageNet-1K) |" in md
    assert f"not this run's weights: {foreign.resolve()}" in md
    assert md.count("| run | this run (measured) | not recorded | 3.5 |") == 1
    assert "| ade_theirs | another checkpoint (measured) | not recorded | 3.5 |" in md
    assert "| ade_norecord | checkpoint unknown (measured) | not recorded | 4.5 |" in md
    assert "| knn_theirs | another checkpoint (measured) | k-NN (DINO's) | caltech101 |" in md
    assert "| run | this run (measured) | not recorded | 5.5 |" in md   # the pipeline's
    assert "| run | this run (measured) | linear probe (MAE's recipe) | caltech101 |" in md
    assert "no 11-dataset result was found" in md  # a linprobe OUT's results.csv is not one
    assert md.count("this run (measured)") == 4
