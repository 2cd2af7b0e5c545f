"""Issue 17 items 4 and 6 for the pretraining engine: a checkpoint is only written of finite
weights and optimizer state, and a learning rate beyond fp32 fails validation before anything
is written."""
import pytest
import torch

from mixedae.pretrain import command, engine
from mixedae.runtime import checkpoint as ckpt
from mixedae.runtime.torch_files import read_safetensors
from mixedae.runtime.finite import state_finite

from test_reliability import args_for
from test_train import synthetic_folder


def blow_up_weights_at(monkeypatch, step: int, scale: float = 1e25):
    """The engine's optimizer scales one weight by ``scale`` after its ``step``-th update: the
    weights stay finite floats, gradients stay finite, but |w|² overflows fp32 (what a
    learning rate of 1e30 does)."""
    real = engine.build_optimizer

    def build(model, cfg):
        opt = real(model, cfg)
        calls = {"n": 0}
        orig = opt.step

        def stepped(*a, **k):
            out = orig(*a, **k)
            calls["n"] += 1
            if calls["n"] == step:
                with torch.no_grad():
                    model.encoder.patch_embed.proj.weight.mul_(scale)
            return out
        opt.step = stepped
        return opt
    monkeypatch.setattr(engine, "build_optimizer", build)


def test_diverged_weights_are_never_saved_as_last_good(tmp_path, capsys, monkeypatch):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    blow_up_weights_at(monkeypatch, 5)
    rc = command.main(args_for(data, out, "--save-every", "1", "--max-steps", "8"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert "non-finite weights or optimizer state" in err[0] and "at step 5" in err[0]
    assert f"last good checkpoint: step 4 in {out / 'checkpoint.pth'}" in err[0]
    state = ckpt.load_checkpoint(out / "checkpoint.pth")
    assert state["step"] == 4
    assert state["model"]["encoder.patch_embed.proj.weight"].abs().max() < 1e3
    assert read_safetensors(out / "model.safetensors")[1]["step"] == "4"


def test_state_finite_reads_parameters_and_optimizer_moments():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones(4)
    opt.step()
    assert state_finite(opt)
    opt.state[p]["exp_avg_sq"][0] = float("inf")
    assert not state_finite(opt)
    opt.state[p]["exp_avg_sq"][0] = 0.0
    with torch.no_grad():
        p[1] = 1e30                     # finite, but its square overflows fp32
    assert not state_finite(opt)


@pytest.mark.parametrize("flags, needle", [(["--lr", "1e39"], "lr=1e+39"),
                                           (["--blr", "1e41"], "blr · batch_size / 256")])
def test_learning_rate_beyond_fp32_fails_validation_and_writes_nothing(tmp_path, capsys, flags,
                                                                       needle):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    rc = command.main(args_for(data, out, *flags))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert needle in err[0] and "--lr" in err[0] and "float32" in err[0]
    assert not (out / "config.json").exists() and not out.exists()


def test_batch_larger_than_the_dataset_names_the_flag(tmp_path, capsys):
    data, out = synthetic_folder(tmp_path / "data", n=24), tmp_path / "out"
    rc = command.main(args_for(data, out, "--batch-size", "32"))
    err = capsys.readouterr().err
    assert rc == 2 and "fewer than one global batch (32)" in err and "--batch-size" in err
    assert not (out / "config.json").exists()
