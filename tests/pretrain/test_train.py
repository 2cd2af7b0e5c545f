"""Pretraining engine: loss falls on real images, exact kill-and-resume, config errors, recipe."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import data_dir
from mixedae.pretrain import command, engine as train
from mixedae.pretrain.config import get_preset
from mixedae.runtime.errors import ConfigError
from mixedae.pretrain.data import PretrainImages, build_pretrain_dataset, pretrain_transform
from mixedae.runtime.schedules import cosine_lr
from mixedae.model.mixed_autoencoder import MixedAutoencoder

MICRO = dict(model="micro", img_size=32, patch_size=8, mask_patch_size=16, decoder_dim=32,
             decoder_depth=1, decoder_heads=2, homo_con_dim=16)
MICRO_ARGS = ["--preset", "mixedae_tiny", "--model", "micro", "--img-size", "32",
              "--patch-size", "8", "--mask-patch-size", "16", "--set", "decoder_dim=32",
              "--set", "decoder_depth=1", "--set", "decoder_heads=2", "--set", "homo_con_dim=16"]


def synthetic_folder(root, n=24, size=40):
    """An ImageFolder of smooth random colour images (two classes)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(d / f"img{i}.png")
    return root


def run(cfg_kw, data, out, **opts):
    cfg = get_preset("mixedae_tiny", **{**MICRO, **cfg_kw})
    ds = build_pretrain_dataset(data, cfg.img_size, cfg.crop_scale)
    o = train.RunOptions(**{**dict(output_dir=str(out), num_workers=0, progress=False,
                                   device="cpu", amp="none", log_every=1), **opts})
    return train.pretrain(cfg, ds, o)


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def killed_at_step(monkeypatch, n, start):
    """``start()`` with the engine's ``train_step`` raising KeyboardInterrupt (a SIGKILL
    stand-in) at its n-th call; the real step is restored afterwards."""
    real_step, calls = train.train_step, {"n": 0}

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real_step(*a, **k)

    monkeypatch.setattr(train, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        start()
    monkeypatch.setattr(train, "train_step", real_step)


def test_loss_falls_on_imagenet_tiny(tmp_path):
    data = data_dir("imagenet_tiny")
    res = run(dict(batch_size=16, epochs=1, warmup_epochs=0, lr=2e-3), data, tmp_path,
              max_steps=30, resume=None, num_workers=2)  # worker processes decode
    seq = losses(tmp_path)
    assert res.step == 30 and len(seq) == 30 and all(math.isfinite(v) for v in seq)
    first, last = np.mean(seq[:5]), np.mean(seq[-5:])
    assert last < first - 0.05, (first, last)
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert len(rec["topk_acc"]) == 4 - 1  # micro depth 4, first layer global
    assert set(rec) >= {"step", "loss", "loss_recon", "loss_homocon", "lr", "img_per_s"}
    assert (tmp_path / "checkpoint.pth").is_file() and (tmp_path / "model.safetensors").is_file()
    assert list((tmp_path / "tb").iterdir())


def test_kill_and_resume_is_exact(tmp_path, monkeypatch):
    data = synthetic_folder(tmp_path / "data")
    kw = dict(batch_size=8, epochs=3, warmup_epochs=1, accum_iter=2)  # 3 steps/epoch
    full = tmp_path / "full"
    run(kw, data, full, max_steps=8, resume=None, save_every=100)
    ref = losses(full)
    assert len(ref) == 8

    # "kill" during step 6, after the checkpoint of step 4 (mid-epoch: epoch 1, step 1 of 3)
    killed = tmp_path / "killed"
    killed_at_step(monkeypatch, 6, lambda: run(kw, data, killed, max_steps=8, resume=None,
                                               save_every=4))
    assert torch.load(killed / "checkpoint.pth", weights_only=True)["step"] == 4
    assert len(losses(killed)) == 5  # step 5 was logged but not checkpointed

    torch.manual_seed(1234)  # unrelated global RNG use between runs must not matter
    res = run(kw, data, killed, max_steps=8, resume="auto", save_every=4)
    assert res.step == 8
    assert losses(killed) == ref  # bit-identical loss sequence, step 5 not duplicated
    a = torch.load(full / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(killed / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args,needle", [
    (["--mix-ratio", "0.3"], "r=0.3"),
    (["--mix-ratio", "0.6"], "r=0.6"),
    (["--batch-size", "10"], "batch_size=10"),
    (["--set", "topk_ratio=2.0"], "K=32"),
    (["--img-size", "40"], "img_size=40"),
    (["--batch-size", "8", "--accum-iter", "4"], "micro-batch 2"),
    (["--batch-size", "8", "--accum-iter", "3"], "accum_iter (3)"),
])
def test_bad_config_fails_before_training(tmp_path, capsys, args, needle):
    data = synthetic_folder(tmp_path / "data", n=4)
    out = tmp_path / "out"
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data),
                                  "--output-dir", str(out)] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "error:" in err and needle in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_dataset_folder_is_named(tmp_path, capsys, kind):
    data = tmp_path / "nothing_here"
    if kind == "empty":
        (data / "cls").mkdir(parents=True)
        (data / "cls" / "notes.txt").write_text("no images")
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data),
                                  "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and str(data) in err


def test_time_limit_stops_with_checkpoint(tmp_path):
    data = synthetic_folder(tmp_path / "data", n=16)
    res = run(dict(batch_size=8), data, tmp_path / "out", time_limit=1e-6, resume=None)
    assert res.step == 1 and torch.load(tmp_path / "out" / "checkpoint.pth",
                                        weights_only=True)["step"] == 1


def test_resume_names_only_real_config_changes(tmp_path, caplog):
    """A field added after a checkpoint was written reads as what that run did (no warning);
    a real change is named."""
    data = synthetic_folder(tmp_path / "data", n=16)
    out = tmp_path / "out"
    run(dict(batch_size=8), data, out, max_steps=1, resume=None)
    path = out / "checkpoint.pth"
    state = torch.load(path, weights_only=True)
    old = json.loads(state["config"])
    del old["decode"]                           # written before --decode existed
    torch.save(dict(state, config=json.dumps(old)), path)
    with caplog.at_level("WARNING", logger="mixedae.pretrain.engine"):
        run(dict(batch_size=8), data, out, max_steps=2, resume="auto")
    assert "changed config" not in caplog.text
    with caplog.at_level("WARNING", logger="mixedae.pretrain.engine"):
        run(dict(batch_size=8, homo_con_weight=0.2), data, out, max_steps=3, resume="auto")
    assert "changed config: ['homo_con_weight']" in caplog.text


def test_dataset_smaller_than_batch(tmp_path):
    data = synthetic_folder(tmp_path / "data", n=4)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        run(dict(batch_size=8), data, tmp_path / "out", max_steps=1, resume=None)


def test_optimizer_groups_and_schedule():
    cfg = get_preset("mixedae_tiny", **MICRO, batch_size=512, blr=1.5e-4)
    assert math.isclose(cfg.effective_lr(), 3e-4)
    model = MixedAutoencoder(cfg.model_config())
    opt = train.build_optimizer(model, cfg)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert names and all(n.endswith(".weight") for n in names)
    assert not any("norm" in n or "token" in n or "pos_embed" in n for n in names)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    # MAE per-iteration schedule: linear warmup to base lr, half-cosine to min_lr
    assert cosine_lr(0, 1.0, 100, 10) == 0.0
    assert math.isclose(cosine_lr(5, 1.0, 100, 10), 0.5)
    assert math.isclose(cosine_lr(10, 1.0, 100, 10), 1.0)
    assert math.isclose(cosine_lr(55, 1.0, 100, 10), 0.5)
    assert math.isclose(cosine_lr(100, 1.0, 100, 10, min_lr=0.1), 0.1)


def test_micro_batch_size():
    cfg = get_preset("mixedae_tiny", **MICRO, batch_size=64, accum_iter=2)
    assert cfg.micro_batch_size(4) == 8
    with pytest.raises(ConfigError, match="micro-batch 2"):
        cfg.micro_batch_size(16)


def test_in_memory_dataset_uses_same_engine(tmp_path):
    """The demo path: PIL images in memory, no files."""
    imgs = [Image.new("RGB", (48, 48), c) for c in ("red", "green", "blue", "white")]
    cfg = get_preset("mixedae_tiny", **MICRO, batch_size=8, epochs=1, warmup_epochs=0)
    ds = PretrainImages(imgs * 4, pretrain_transform(cfg.img_size))
    res = train.pretrain(cfg, ds, train.RunOptions(output_dir=str(tmp_path), num_workers=0,
                                                   progress=False, device="cpu", amp="none",
                                                   resume=None))
    assert res.step == 2 and math.isfinite(res.metrics["loss"])


def test_override_flags_parse_as_their_config_fields_type():
    """--epochs / --warmup-epochs are float fields (the schedule is per step): a fractional
    value reaches the config, and every override flag parses as its field's type."""
    import typing

    from mixedae.pretrain.config import PretrainConfig
    args = command.get_args_parser().parse_args(
        ["--data", "x", "--preset", "mixedae_tiny", "--epochs", "0.5", "--warmup-epochs", "0.25"])
    cfg = command.config_from_args(args)
    assert (cfg.epochs, cfg.warmup_epochs) == (0.5, 0.25)
    hints = typing.get_type_hints(PretrainConfig)
    for name in command._OVERRIDES:
        value = getattr(command.get_args_parser().parse_args(
            ["--data", "x", f"--{name.replace('_', '-')}", "3"]), name)
        assert isinstance(value, typing.get_args(hints[name]) or hints[name]), name
