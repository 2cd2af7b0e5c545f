"""The pretraining input pipelines: ``decode='gpu'`` (``--decode gpu``, batched decode +
augmentation, run on CPU tensors) — exact kill-and-resume, crops fixed by the sample seeds, a
corrupt JPEG named once and substituted, the flag validated and recorded —; ``decode='cpu'``
with uint8 crops normalised after the transfer; one JPEG decoder behind both; a zero-byte file
on both paths; tools/benchmark_loader.py timing the engine's own stream."""
import itertools
import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, data_dir
from mixedae.pretrain import command, engine as train
from mixedae.pretrain.config import get_preset
from mixedae.runtime.errors import ConfigError
from mixedae.pretrain.data import (PretrainImages, build_pretrain_dataset, normalize,
                                   pretrain_transform)
from mixedae.pretrain.decode import decode_file, device_decode_problem, jpeg_library
from mixedae.pretrain.gpu_augment import GPUAugment, decode_batch
from mixedae.pretrain.input_pipeline import (DeviceAugment, EncodedSamples, collate_samples,
                                             pretrain_batches)
from mixedae.runtime.sampler import EpochStreamSampler, SeededSample
from test_train import MICRO, MICRO_ARGS, killed_at_step, losses

CPU = torch.device("cpu")


def jpeg_folder(root, n=24, size=40, bad=(), empty=()):
    """An ImageFolder of smooth random colour JPEGs (two classes); indices in ``bad`` hold
    bytes that are not an image, indices in ``empty`` are zero-byte files."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)
        if i in bad:
            (d / f"img{i:02d}.jpg").write_bytes(b"\xff\xd8 truncated, not a JPEG" * 4)
        elif i in empty:
            (d / f"img{i:02d}.jpg").write_bytes(b"")
        else:
            Image.fromarray(small).resize((size + i % 3 * 4, size), Image.BICUBIC).save(
                d / f"img{i:02d}.jpg", quality=90)
    return root


def gpu_run(cfg_kw, data, out, **opts):
    cfg = get_preset("mixedae_tiny", **{**MICRO, "decode": "gpu", **cfg_kw})
    ds = build_pretrain_dataset(data, cfg.img_size, cfg.crop_scale)
    o = train.RunOptions(**{**dict(output_dir=str(out), num_workers=0, progress=False,
                                   device="cpu", amp="none", log_every=1), **opts})
    return train.pretrain(cfg, ds, o)


def stream(ds, n_batches, start_offset=0, workers=0, decode="gpu"):
    sampler = EpochStreamSampler(len(ds), seed=3, start_offset=start_offset)
    it = pretrain_batches(ds, sampler, decode=decode, img_size=32, scale=(0.2, 1.0),
                          batch_size=4, num_workers=workers, device=CPU, seed=3)
    return [next(it) for _ in range(n_batches)]


def test_gpu_decode_kill_and_resume_is_exact(tmp_path, monkeypatch):
    """Mirrors test_train.test_kill_and_resume_is_exact on the gpu path."""
    data = jpeg_folder(tmp_path / "data")
    kw = dict(batch_size=8, epochs=3, warmup_epochs=1, accum_iter=2)  # 3 steps/epoch
    full = tmp_path / "full"
    gpu_run(kw, data, full, max_steps=4, resume=None, save_every=100)
    ref = losses(full)
    assert len(ref) == 4
    assert json.loads((full / "config.json").read_text())["decode"] == "gpu"

    killed = tmp_path / "killed"  # "kill" during step 3, after the (mid-epoch) checkpoint of 2
    killed_at_step(monkeypatch, 3, lambda: gpu_run(kw, data, killed, max_steps=4, resume=None,
                                                   save_every=2))
    assert torch.load(killed / "checkpoint.pth", weights_only=True)["step"] == 2

    torch.manual_seed(1234)  # unrelated global RNG use between runs must not matter
    res = gpu_run(kw, data, killed, max_steps=4, resume="auto", save_every=2)
    assert res.step == 4 and losses(killed) == ref  # bit-identical, across the epoch end


def test_crops_depend_only_on_the_sample_seeds(tmp_path):
    """Same keys → same batches; a stream started mid-epoch continues the same batches; the
    crops are the per-sample seeds' (GPUAugment with the draws taken under each seed)."""
    files = sorted(str(p) for p in jpeg_folder(tmp_path / "d", n=12).rglob("*.jpg"))
    ds = PretrainImages(files, pretrain_transform(32))
    a = stream(ds, 3)
    assert all(b.shape == (4, 3, 32, 32) and b.dtype == torch.float32 for b in a)
    assert not torch.equal(a[0], a[1])
    resumed = stream(ds, 2, start_offset=4)
    assert all(torch.equal(x, y) for x, y in zip(a[1:], resumed))
    # batch 0 by hand: each key (index, seed) → draws under that seed → GPUAugment
    keys = list(itertools.islice(iter(EpochStreamSampler(len(ds), seed=3)), 4))
    data, index, draws = collate_samples([SeededSample(EncodedSamples(files))[k] for k in keys])
    assert index.tolist() == [i for i, _ in keys]
    want = GPUAugment(32)(decode_batch(data, "cpu"), draws=draws)
    assert torch.equal(a[0], want)
    other = GPUAugment(32)(decode_batch(data, "cpu"), generator=torch.Generator().manual_seed(9))
    assert not torch.equal(a[0], other)


def test_corrupt_jpeg_is_named_once_and_substituted(tmp_path, caplog):
    root = jpeg_folder(tmp_path / "d", n=8, bad={2})
    files = sorted(str(p) for p in root.rglob("*.jpg"))
    bad = next(f for f in files if f.endswith("img02.jpg"))
    j = files.index(bad)
    aug = DeviceAugment(files, 32, (0.2, 1.0), CPU)
    keys = [(j, 7), (j, 7), ((j + 1) % 8, 7)]  # the bad file twice, then its substitute
    batch = collate_samples([SeededSample(EncodedSamples(files))[k] for k in keys])
    with caplog.at_level(logging.WARNING):
        out = aug(batch)
    named = [r for r in caplog.records if bad in r.getMessage()]
    assert len(named) == 1 and "skipping unreadable image" in named[0].getMessage()
    assert torch.isfinite(out).all() and out.shape == (3, 3, 32, 32)
    # same seed, same crop: the substitute is the next file with the bad sample's crop
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0.05)  # PIL vs libjpeg decode
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_corrupt_jpeg_does_not_stop_a_gpu_decode_run(tmp_path, capsys, caplog):
    data = jpeg_folder(tmp_path / "d", n=16, bad={5})
    out = tmp_path / "out"
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--epochs", "2", "--decode", "gpu",
                                    "--data", str(data), "--output-dir", str(out),
                                    "--device", "cpu", "--amp", "none", "--num-workers", "0",
                                    "--no-progress", "--log-every", "1"])
    assert rc == 0, capsys.readouterr().err
    named = [r.getMessage() for r in caplog.records if "img05.jpg" in r.getMessage()]
    assert len(named) == 1 and "skipping unreadable image" in named[0]
    assert len(losses(out)) == 4  # 2 steps/epoch, 2 epochs
    assert json.loads((out / "config.json").read_text())["decode"] == "gpu"


def test_decode_flag_is_validated_before_any_work(tmp_path, capsys):
    data = jpeg_folder(tmp_path / "d", n=4)
    out = tmp_path / "out"
    rc = command.main(MICRO_ARGS + ["--batch-size", "8", "--decode", "tpu", "--data", str(data),
                                    "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "decode='tpu'" in err and len(err.splitlines()) == 1
    assert not out.exists()
    imgs = [Image.new("RGB", (48, 48), c) for c in ("red", "green", "blue", "white")] * 4
    cfg = get_preset("mixedae_tiny", **MICRO, batch_size=8, decode="gpu")
    with pytest.raises(ConfigError, match="in-memory images"):
        train.pretrain(cfg, PretrainImages(imgs, pretrain_transform(32)),
                       train.RunOptions(output_dir=str(out), device="cpu", resume=None))
    assert not out.exists()


def test_benchmark_loader_times_the_engine_stream_on_cpu(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    import benchmark_loader
    data = data_dir("imagenet_tiny")
    js = tmp_path / "loader.jsonl"
    benchmark_loader.main(["--data", str(data), "--paths", "cpu-pil,cpu,gpu", "--workers", "0",
                           "--seconds", "0.5", "--batch-size", "4", "--img-size", "32",
                           "--max-batches", "2", "--device", "cpu", "--json", str(js),
                           "--pixels", "3"])
    rows = [json.loads(line) for line in js.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["cpu-pil", "cpu", "gpu", "cpu vs cpu-pil pixels"]
    assert all(r["img_per_s_per_core"] > 0 and r["images"] >= 4 for r in rows[:3])
    lib = jpeg_library()
    assert [r["decoder"] for r in rows[:3]] == ["PIL", f"{lib} on cpu", f"{lib} on cpu"]
    assert rows[1]["per_core_vs_cpu_pil"] > 0
    assert 0 <= rows[3]["mean_abs_diff"] < 1 and rows[3]["images"] == 3
    assert "x cpu-pil per worker core" in capsys.readouterr().out
    assert all(r["img_per_cpu_s"] > 0 for r in rows[:3])


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_zero_byte_file_is_named_once_and_substituted_on_both_paths(tmp_path, caplog, decode):
    """issue 17 item 3: a zero-byte file killed --decode gpu (torch.frombuffer's ValueError)."""
    files = sorted(str(p) for p in jpeg_folder(tmp_path / "d", n=6, empty={1}).rglob("*.jpg"))
    empty = next(f for f in files if f.endswith("img01.jpg"))
    ds = PretrainImages(files, pretrain_transform(32))
    with caplog.at_level(logging.WARNING):
        batches = stream(ds, 3, decode=decode)  # 12 samples over 6 files: the empty one twice
    assert all(b.shape == (4, 3, 32, 32) and torch.isfinite(b).all() for b in batches)
    named = [r.getMessage() for r in caplog.records if empty in r.getMessage()]
    assert len(named) == 1 and "skipping unreadable image" in named[0]


def test_cpu_path_workers_return_uint8_crops_normalised_on_the_device(tmp_path):
    """--decode cpu: uint8 crops out of the workers (collated uint8), normalised after the
    transfer; the values are those of the dataset's own items (same seeds, same pixels), any
    worker count, and a stream started mid-epoch continues the same batches (exact resume)."""
    files = sorted(str(p) for p in jpeg_folder(tmp_path / "d", n=12).rglob("*.jpg"))
    ds = PretrainImages(files, pretrain_transform(32))
    keys = list(itertools.islice(iter(EpochStreamSampler(len(ds), seed=3)), 12))
    crops = [SeededSample(ds.crops())[k] for k in keys[:4]]
    assert all(c.dtype == torch.uint8 and c.shape == (3, 32, 32) for c in crops)
    a = stream(ds, 3, decode="cpu")
    assert all(b.dtype == torch.float32 and b.shape == (4, 3, 32, 32) for b in a)
    want = torch.stack([SeededSample(ds)[k] for k in keys[:4]])  # float items, one by one
    assert torch.equal(a[0], want)
    assert torch.equal(a[0], normalize(torch.stack(crops)))
    assert all(torch.equal(x, y) for x, y in zip(a, stream(ds, 3, decode="cpu", workers=1)))
    assert all(torch.equal(x, y) for x, y in zip(a[1:], stream(ds, 2, 4, decode="cpu")))


def test_one_jpeg_decoder_behind_both_paths_and_never_a_silent_cpu_decode(tmp_path):
    """decode_file (cpu path) and decode_batch (gpu path) both decode through decode_jpegs
    (TorchCodec or torchvision.io, named by jpeg_library); a non-JPEG goes through PIL; a
    device the decoder does not decode on is refused, not decoded on the CPU under its name."""
    files = sorted(str(p) for p in jpeg_folder(tmp_path / "d", n=3).rglob("*.jpg"))
    png = tmp_path / "x.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(png)
    assert jpeg_library() in ("torchcodec", "torchvision.io")
    raw = [EncodedSamples(files)[i][0] for i in range(3)]
    for f, img in zip(files, decode_batch(raw, "cpu")):
        assert torch.equal(decode_file(f), img) and img.dtype == torch.uint8
    assert decode_file(str(png)).shape == (3, 10, 20)
    assert device_decode_problem("cpu") is None
    problem = device_decode_problem("meta")  # decodes on the CPU (old code: silently used)
    assert problem and "meta" in problem
    with pytest.raises(ConfigError, match="decode='gpu'.*meta"):
        DeviceAugment(files, 32, (0.2, 1.0), torch.device("meta"))
