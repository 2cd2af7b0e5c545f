"""Diagnostics: the HomoCon floor, the source-identity probe and their logging by the engine."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mixedae.model.homologous_contrastive import (homologous_contrastive_floor,
                                                  homologous_contrastive_loss)
from mixedae.model.mixed_autoencoder import MixedAutoencoder
from mixedae.pretrain import command
from mixedae.pretrain.config import get_preset
from mixedae.pretrain.data import PretrainImages, pretrain_transform
from mixedae.pretrain.probe import SourceProbe, homocon_floor
from test_train import MICRO_ARGS, synthetic_folder

PROBE_CFG = dict(model="micro", img_size=64, patch_size=8, mask_patch_size=16, batch_size=8,
                 decoder_dim=32, decoder_depth=1, decoder_heads=2, homo_con_dim=16)


def test_homocon_floor_is_the_infimum_of_eq7():
    assert homocon_floor(get_preset("mixedae_tiny", **PROBE_CFG)) == pytest.approx(math.log(15))
    base = homocon_floor(get_preset("mixedae_base"))  # 49 blocks of 4 patches: 52/48/48/48
    assert base == pytest.approx((52 * math.log(51) + 3 * 48 * math.log(47)) / 196)
    assert homocon_floor(get_preset("mae_homocon_base")) == pytest.approx(math.log(48))
    assert homocon_floor(get_preset("homo_att_only_base")) is None
    torch.manual_seed(0)
    src = torch.randint(0, 4, (3, 40))
    floor = homologous_contrastive_floor(src)
    separated = F.one_hot(src, 8).float()                        # orthogonal per source
    assert homologous_contrastive_loss(separated, src, tau=0.02).item() == pytest.approx(floor,
                                                                                         abs=1e-3)
    for _ in range(5):
        assert homologous_contrastive_loss(torch.randn(3, 40, 8), src).item() > floor


def _dataset(n=64):
    g = torch.Generator().manual_seed(0)
    from PIL import Image
    imgs = [Image.fromarray((torch.rand(12, 12, 3, generator=g) * 255).byte().numpy()).resize(
        (80, 80), Image.BICUBIC) for _ in range(n)]
    return PretrainImages(imgs, pretrain_transform(64))


def test_probe_reads_the_residual_segment_code_at_init_and_not_without_it(single_thread):
    ds = _dataset()
    acc = {}
    for mode in ("residual", "none"):
        torch.manual_seed(0)
        cfg = get_preset("mixedae_tiny", **PROBE_CFG, seg_embed_mode=mode)
        probe = SourceProbe(cfg, ds, "cpu", num_images=64)
        model = MixedAutoencoder(cfg.model_config())
        rng = torch.get_rng_state()
        acc[mode] = probe(model)
        assert torch.equal(rng, torch.get_rng_state())          # the training RNG is untouched
    assert acc["none"]["probe_chance"] == pytest.approx(0.25, abs=0.05)
    assert acc["residual"]["probe_acc"] > 0.9                    # the code is linearly readable
    assert acc["none"]["probe_acc"] < acc["none"]["probe_chance"] + 0.1  # sources exchangeable


def test_engine_logs_probe_and_homocon_ratio(tmp_path):
    data = synthetic_folder(tmp_path / "data", n=16)
    out = tmp_path / "out"
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data), "--output-dir",
                                  str(out), "--max-steps", "5", "--log-every", "1",
                                  "--probe-every", "2", "--device", "cpu", "--no-progress",
                                  "--num-workers", "0"])
    assert rc == 0
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    probes = [r for r in recs if "probe_acc" in r]
    assert [r["step"] for r in probes] == [0, 2, 4, 5]
    assert all(0 <= r["probe_acc"] <= 1 and 0 < r["probe_chance"] <= 1 for r in probes)
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 5
    floor = math.log(3)  # 32 px, 16 px blocks of 4 patches, one block per source
    for r in steps:
        assert r["homocon_ratio"] == pytest.approx(r["loss_homocon"] / floor)
        assert r["homocon_ratio"] >= 1 - 1e-6                     # the floor is an infimum


@pytest.mark.parametrize("args,needle", [
    (["--probe-every", "-1"], "--probe-every -1: must be >= 0"),
    (["--probe-every", "1", "--set", "mixing=\"none\"", "--set", "attention=\"global\""],
     "probe needs mixing"),
])
def test_bad_probe_flags_fail_before_training(tmp_path, capsys, args, needle):
    data = synthetic_folder(tmp_path / "data", n=8)
    out = tmp_path / "out"
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--data", str(data), "--output-dir",
                                  str(out), "--device", "cpu"] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("mixedae pretrain: error:") and needle in err, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
