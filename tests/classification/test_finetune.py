"""``mixedae finetune``: recipe defaults, layer-decay groups (the project's one rule),
timm mixup/cutmix soft targets, and a 2-step run on real tiny data that checkpoints and
resumes exactly."""
import json
from pathlib import Path

import pytest
import torch

from mixedae.classification import engine as E
from mixedae.runtime.schedules import set_lr
from mixedae.classification import finetune as F
from mixedae.runtime.layer_decay import is_no_weight_decay
from mixedae.model.vit import create_vit
from mixedae.classification.augment import _safe_posterize

from conftest import data_dir

TINY = ["--val-folder", "test", "--model", "micro", "--patch-size", "8", "--img-size", "32",
        "--batch-size", "16", "--workers", "0", "--log-every", "1", "--eval-batch-size", "500"]


pytestmark = pytest.mark.usefixtures("single_thread")


def parse(*extra):
    args = F.get_parser().parse_args(["--data", "x", "--output-dir", "y", *extra])
    F.fill_defaults(args)
    return args


def test_recipe_defaults_table5():
    b = parse()
    assert (b.model, b.blr, b.epochs, b.batch_size, b.warmup_epochs) == ("base", 5e-4, 100, 1024, 5)
    assert b.abs_lr == pytest.approx(5e-4 * 1024 / 256)
    assert (b.weight_decay, b.layer_decay, b.drop_path, b.smoothing) == (0.05, 0.65, 0.1, 0.1)
    assert (b.mixup, b.cutmix, b.reprob, b.aa) == (0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1")
    big = parse("--model", "large")
    assert (big.blr, big.epochs, big.batch_size) == (1e-3, 50, 512)
    assert big.abs_lr == pytest.approx(1e-3 * 2)
    assert parse("--lr", "0.1").abs_lr == 0.1


def test_layer_decay_groups_match_the_project_rule():
    model = create_vit("micro", patch_size=8, img_size=32, num_classes=10, global_pool="avg",
                       learnable_pos_embed=True)
    depth, ld, lr, wd = 4, 0.65, 1e-3, 0.05
    groups = F.build_param_groups(model, lr, wd, ld)
    got = {n: (g["layer_id"], g["lr_scale"], g["lr"], g["weight_decay"])
           for g in groups for n in g["param_names"]}
    named = dict(model.named_parameters())
    assert set(got) == set(named)  # every trainable parameter exactly once
    for n, p in named.items():
        lid = model.get_layer_depth(n)[0]
        nd = is_no_weight_decay(n, p, model.no_weight_decay())
        scale = ld ** (depth + 1 - lid)
        assert got[n] == (lid, pytest.approx(scale), pytest.approx(lr * scale),
                          0.0 if nd else wd), n
    # spot checks by hand
    assert got["patch_embed.proj.weight"][:1] == (0,) and got["patch_embed.proj.weight"][3] == wd
    assert got["cls_token"][0] == 0 and got["cls_token"][3] == 0.0
    assert got["pos_embed"][0] == 0 and got["pos_embed"][3] == 0.0
    assert got["blocks.2.attn.qkv.weight"][0] == 3 and got["blocks.2.attn.qkv.weight"][3] == wd
    assert got["blocks.2.norm1.weight"][3] == 0.0 and got["blocks.0.mlp.fc1.bias"][3] == 0.0
    assert got["head.weight"][:2] == (5, 1.0) and got["head.weight"][3] == wd
    assert got["fc_norm.weight"][:2] == (5, 1.0) and got["fc_norm.weight"][3] == 0.0
    # the schedule multiplies each group's lr_scale
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "param_names"} for g in groups])
    set_lr(opt, 0.5)
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == sorted(
        {round(0.5 * ld ** (depth + 1 - i), 12) for i in range(depth + 2)})


def test_mixup_cutmix_soft_targets_sum_to_one():
    root = data_dir("cls_tiny") / "cifar10"
    args = parse("--img-size", "32")
    args.data = str(root)
    args.val_folder = "test"
    train, val = F.image_folders(args)
    x = torch.stack([train[i * 200][0] for i in range(8)])
    y = torch.tensor([train[i * 200][1] for i in range(8)])
    assert x.shape == (8, 3, 32, 32) and len(set(y.tolist())) == 8
    mix = F.build_mixup(args, 10)
    torch.manual_seed(0)
    import numpy as np
    np.random.seed(0)
    for _ in range(6):  # both mixup and cutmix branches
        xm, t = mix(x.clone(), y.clone())
        assert t.shape == (8, 10)
        assert torch.allclose(t.sum(1), torch.ones(8), atol=1e-6)
        assert (t > 0).all()  # label smoothing 0.1 spreads mass over all classes
        assert (t.max(1).values < 1).all()
        assert not torch.equal(xm, x)
    assert isinstance(F.build_loss(args, mix), __import__("timm").loss.SoftTargetCrossEntropy)
    args.mixup = args.cutmix = 0
    assert F.build_mixup(args, 10) is None
    assert type(F.build_loss(args, None)).__name__ == "LabelSmoothingCrossEntropy"
    xv, _ = val[0]
    assert xv.shape == (3, 32, 32)


def test_posterize_zero_bits_is_black():
    from PIL import Image
    im = Image.new("RGB", (4, 4), (200, 100, 50))
    assert _safe_posterize(im, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert _safe_posterize(im, 8) is im
    assert _safe_posterize(im, 1).getpixel((0, 0)) == (128, 0, 0)


def test_two_step_run_checkpoints_and_resumes_exactly(tmp_path, capsys):
    root = data_dir("cls_tiny") / "cifar10"
    a, b = tmp_path / "a", tmp_path / "b"
    base = ["--data", str(root), *TINY]
    assert F.main([*base, "--output-dir", str(a), "--max-steps", "2"]) == 0
    cap = capsys.readouterr()  # the bar counts to --max-steps (not to the 12500 of 100 epochs)
    assert "2/2 [" in cap.err and "/12500" not in cap.err and "stops at step 2" in cap.out
    ck = E.load_checkpoint(a / "checkpoint.pth")
    assert ck["step"] == 2 and set(ck) >= {"model", "optimizer", "rng", "args"}
    assert {g["lr_scale"] for g in ck["optimizer"]["param_groups"]} == {
        0.65 ** i for i in range(6)}  # micro follows the ViT-B recipe
    res = json.loads((a / "result.json").read_text())
    assert res["step"] == 2 and not res["finished"] and 0 <= res["last"]["top1"] <= 100
    # an existing checkpoint is never overwritten silently
    assert F.main([*base, "--output-dir", str(a), "--max-steps", "4"]) == 2
    assert "--resume auto" in capsys.readouterr().err
    assert F.main([*base, "--output-dir", str(a), "--max-steps", "4", "--resume", "auto"]) == 0
    res = json.loads((a / "result.json").read_text())
    assert res["resumed_from"] == 2 and res["step"] == 4
    log = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["event"] == "train"] == [1, 2, 3, 4]
    # 2 + 2 resumed steps == 4 uninterrupted steps (same batches, augmentations, mixup, drop path)
    assert F.main([*base, "--output-dir", str(b), "--max-steps", "4"]) == 0
    ma, mb = E.load_checkpoint(a / "checkpoint.pth"), E.load_checkpoint(b / "checkpoint.pth")
    assert ma["step"] == mb["step"] == 4
    for k, v in ma["model"].items():
        assert torch.equal(v, mb["model"][k]), k


def test_layer_decay_sweep_and_pretrained(tmp_path):
    root = data_dir("cls_tiny") / "cifar10"
    src = create_vit("micro", patch_size=8, img_size=32)
    torch.save({"model": src.state_dict()}, tmp_path / "enc.pth")
    out = tmp_path / "sweep"
    assert F.main(["--data", str(root), *TINY, "--output-dir", str(out), "--max-steps", "1",
                   "--checkpoint", str(tmp_path / "enc.pth"),
                   "--layer-decay-sweep", "0.65,0.75"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert set(sweep["results"]) == {"0.65", "0.75"} and sweep["best_layer_decay"] is None
    for ld in (0.65, 0.75):
        ck = E.load_checkpoint(out / f"ld{ld:g}" / "checkpoint.pth")
        assert min(g["lr_scale"] for g in ck["optimizer"]["param_groups"]) == pytest.approx(ld ** 5)
        # the first warm-up step has lr 0, so the weights are still the loaded ones
        for k in ("blocks.1.attn.proj.weight", "patch_embed.proj.weight", "pos_embed"):
            assert torch.equal(ck["model"][k], src.state_dict()[k]), k
        start = json.loads((out / f"ld{ld:g}" / "log.jsonl").read_text().splitlines()[0])
        assert start["pretrained"]["format"] == "plain"


def test_bad_input_errors(tmp_path, capsys):
    assert F.main(["--data", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    (tmp_path / "d" / "train" / "c").mkdir(parents=True)
    assert F.main(["--data", str(tmp_path / "d"), "--output-dir", str(tmp_path / "o"),
                   "--model", "micro"]) == 2
    assert str(tmp_path / "d" / "val") in capsys.readouterr().err


def test_two_rank_ddp_gloo(tmp_path):
    """torchrun, 2 CPU ranks (gloo): per-rank batch, sharded eval counts every image once,
    rank 0 writes the checkpoint, resume works."""
    import os
    import subprocess
    import sys
    root = data_dir("cls_tiny") / "cifar10"
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mixedae.cli", "finetune", "--data", str(root), *TINY,
           "--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    r = subprocess.run(cmd + ["--max-steps", "1"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(cmd + ["--max-steps", "2", "--resume", "auto"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    start = log[0]
    assert start["world"] == 2 and start["per_rank_batch"] == 8
    evals = [e for e in log if e["event"] == "eval"]
    assert len(evals) == 2  # rank 0 logs only
    ck = E.load_checkpoint(out / "checkpoint.pth")
    assert ck["step"] == 2 and len(ck["rng"]) == 2
    assert r.stdout.count("[finetune] epoch") == 1  # printed once, by rank 0


def test_eval_only_loads_strictly_evaluates_and_trains_nothing(tmp_path, capsys):
    """MAE's ``--eval --resume CKPT``: the checkpoint's classifier scores what the run scored
    at that step; nothing is trained or rewritten; a foreign checkpoint is named."""
    root = data_dir("cls_tiny") / "cifar10"
    base = ["--data", str(root), *TINY]
    a = tmp_path / "a"
    assert F.main([*base, "--output-dir", str(a), "--max-steps", "2", "--model-ema"]) == 0
    ckpt, res = a / "checkpoint.pth", (a / "result.json").read_bytes()
    before = ckpt.read_bytes()
    e = tmp_path / "e"
    assert F.main([*base, "--output-dir", str(e), "--eval", "--resume", str(ckpt)]) == 0
    got = json.loads((e / "eval" / "result.json").read_text())
    last = json.loads(res)["last"]
    assert got["eval_only"] and got["step"] == 2 and got["n_val"] == 1000
    for k in ("top1", "top5", "mean_per_class", "ema_top1", "ema_top5"):
        assert got[k] == last[k], k  # the same weights, the same evaluation
    assert (e / "eval" / "per_class.csv").is_file() and (e / "eval" / "confusion.csv").is_file()
    assert sorted(p.name for p in e.iterdir()) == ["eval"]  # no checkpoint, no log: no training
    assert f"eval {ckpt} (step 2): top-1 {last['top1']:.2f}" in capsys.readouterr().out
    # --resume auto in the run's own directory: its checkpoint and summary stay as they were
    assert F.main([*base, "--output-dir", str(a), "--eval", "--resume", "auto"]) == 0
    assert ckpt.read_bytes() == before and (a / "result.json").read_bytes() == res
    assert json.loads((a / "eval" / "result.json").read_text())["top1"] == last["top1"]
    # strict: a pretraining checkpoint, other flags, no --resume: one line, nothing written
    src = create_vit("micro", patch_size=8, img_size=32)
    torch.save({"model": src.state_dict()}, tmp_path / "enc.pth")
    for extra, text in ((["--resume", str(tmp_path / "enc.pth")], "head.weight"),
                        (["--resume", str(ckpt), "--img-size", "64"], "--img-size 32 (given 64)"),
                        ([], "give --resume CKPT"),
                        (["--resume", str(tmp_path / "nope.pth")], "nope.pth: no such file")):
        out = tmp_path / "bad"
        capsys.readouterr()
        assert F.main([*base, "--output-dir", str(out), "--eval", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err and "Traceback" not in err, err
        assert not out.exists()


def test_result_written_after_every_evaluation_and_on_ctrl_c(tmp_path, monkeypatch):
    from test_cls_reliability import small_cifar
    data = small_cifar(tmp_path / "root")  # 80 train images, 16 a step: 5 steps an epoch
    base = ["--data", str(data), "--val-folder", "test", "--model", "micro", "--patch-size",
            "8", "--img-size", "32", "--batch-size", "16", "--epochs", "2", "--warmup-epochs",
            "1", "--workers", "0", "--no-progress"]
    step = E._optimizer_step
    for exc, rc in ((RuntimeError("killed"), 1), (KeyboardInterrupt(), 130)):
        calls = []

        def dies_at_7(*a, **kw):  # a failure (or Ctrl-C) two steps after the epoch-0 eval
            calls.append(1)
            if len(calls) == 7:
                raise exc
            return step(*a, **kw)
        monkeypatch.setattr(E, "_optimizer_step", dies_at_7)
        out = tmp_path / type(exc).__name__
        assert F.main([*base, "--output-dir", str(out)]) == rc
        res = json.loads((out / "result.json").read_text())
        assert res["step"] == 5 and res["finished"] is False and res["last"]["step"] == 5
        assert res.get("interrupted", False) == (rc == 130)
