"""Checkpoints: atomic writes, RNG round trip, weights_only loading, key errors, safetensors."""
import json
import os
import random

import numpy as np
import pytest
import torch

from mixedae.runtime import checkpoint as ckpt
from mixedae.runtime.errors import CheckpointError
from mixedae.runtime.torch_files import read_safetensors
from mixedae.pretrain.config import get_preset
from mixedae.model.mixed_autoencoder import MixedAutoencoder

MICRO = dict(model="micro", img_size=32, patch_size=8, mask_patch_size=16, decoder_dim=32,
             decoder_depth=1, decoder_heads=2, homo_con_dim=16, batch_size=8)


@pytest.fixture(scope="module")
def cfg_model():
    cfg = get_preset("mixedae_tiny", **MICRO)
    torch.manual_seed(0)
    return cfg, MixedAutoencoder(cfg.model_config())


def save(path, model, cfg, step=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(8, 3, 32, 32))["loss"].backward()
    opt.step()
    ckpt.save_checkpoint(path, model=model, optimizer=opt, scaler=None, cfg=cfg, step=step,
                         epoch=1, step_in_epoch=step - 2, rng=[ckpt.rng_state()])
    return opt


def test_checkpoint_round_trip_weights_only(tmp_path, cfg_model):
    cfg, model = cfg_model
    opt = save(tmp_path / "checkpoint.pth", model, cfg)
    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pth")  # torch.load(weights_only=True)
    assert state["step"] == 3 and state["epoch"] == 1 and state["step_in_epoch"] == 1
    assert json.loads(state["config"]) == json.loads(cfg.to_json())
    fresh = MixedAutoencoder(cfg.model_config())
    ckpt.load_model_state(fresh, state["model"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values()))
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3, betas=(0.9, 0.95))
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert ckpt.resolve_resume("auto", tmp_path) == tmp_path / "checkpoint.pth"
    assert ckpt.resolve_resume("auto", tmp_path / "new") is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "missing.pth"), tmp_path)


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # populate python's cached gaussian
    state = ckpt.rng_state()
    expect = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert expect[:2] == got[:2] and torch.equal(expect[2], got[2])


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, cfg_model, monkeypatch):
    cfg, model = cfg_model
    path = tmp_path / "checkpoint.pth"
    save(path, model, cfg, step=3)
    before = path.read_bytes()
    real_save = torch.save

    def crash_mid_write(obj, f, *a, **k):  # f: a path or the writer's file object
        if hasattr(f, "write"):
            f.write(b"half a checkpoint")
        else:
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        save(path, model, cfg, step=4)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["step"] == 3
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # no temp file left behind


def test_mismatched_keys_fail_in_one_line(tmp_path, cfg_model):
    cfg, model = cfg_model
    sd = dict(model.state_dict())
    sd.pop("encoder.norm.weight")
    sd["decoder.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_model_state(model, sd, source="ck.pth")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "ck.pth" in msg
    assert "missing keys: encoder.norm.weight" in msg and "unexpected keys: decoder.extra" in msg
    sd = dict(model.state_dict())
    sd["encoder.norm.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatch.*encoder.norm.weight"):
        ckpt.load_model_state(model, sd)


def test_safetensors_with_metadata(tmp_path, cfg_model):
    cfg, model = cfg_model
    ckpt.save_safetensors(tmp_path / "model.safetensors", model, cfg, step=7)
    sd, meta = read_safetensors(tmp_path / "model.safetensors")
    assert meta["step"] == "7" and json.loads(meta["config"]) == json.loads(cfg.to_json())
    assert set(sd) == set(model.state_dict())
    assert all(k.split(".")[0] in ("encoder", "decoder", "projector", "seg_embed") for k in sd)
    ckpt.load_model_state(MixedAutoencoder(cfg.model_config()), sd)
