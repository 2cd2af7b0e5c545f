"""Data of every engine: RGB conversion (runtime.images), corrupt-image skipping, seeded
augmentation and the resumable sample stream (runtime.sampler)."""
import itertools
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import data_dir
from mixedae.pretrain.data import (PretrainImages, build_pretrain_dataset, list_images,
                                   pretrain_transform)
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.images import load_rgb
from mixedae.runtime.sampler import EpochStreamSampler, SeededSample


def write_modes(root):
    """One image per awkward PIL mode, ImageFolder layout."""
    d = root / "cls"
    d.mkdir(parents=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    rgb.convert("L").save(d / "gray.jpg")
    rgb.convert("CMYK").save(d / "cmyk.jpg")
    rgb.convert("P").save(d / "palette.png")
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    pal.save(d / "palette_alpha.png", transparency=0)
    rgb.convert("RGBA").save(d / "rgba.png")
    rgb.convert("LA").save(d / "gray_alpha.png")
    rgb.save(d / "rgb.JPEG")
    return root


def test_all_modes_become_rgb(tmp_path):
    root = write_modes(tmp_path)
    files = list_images(root)
    assert len(files) == 7
    for f in files:
        assert load_rgb(f).mode == "RGB", f
    ds = build_pretrain_dataset(root, 32)
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32
    assert -3 < x.min() < 0 < x.max() < 3  # ImageNet-normalised


def test_corrupt_image_is_skipped_with_its_path(tmp_path, caplog):
    root = write_modes(tmp_path)
    bad = root / "cls" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = (root / "cls" / "rgb.JPEG").read_bytes()
    (root / "cls" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    ds = build_pretrain_dataset(root, 32)
    with caplog.at_level(logging.WARNING, logger="mixedae.pretrain.data"):
        stream = EpochStreamSampler(len(ds), used=9)
        loader = DataLoader(SeededSample(ds), batch_size=3, sampler=stream, drop_last=True)
        batches = list(itertools.islice(iter(loader), 6))  # two epochs
    assert all(b.shape == (3, 3, 32, 32) for b in batches) and len(batches) == 6
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(str(bad) in m for m in msgs) == 1  # reported once, with its path
    assert all(len(m.splitlines()) == 1 for m in msgs)
    assert any("truncated.jpg" in m for m in msgs)


def test_imagenet_tiny_loads(tmp_path):
    root = data_dir("imagenet_tiny")
    ds = build_pretrain_dataset(root, 48)
    assert len(ds) == 500
    x = torch.stack([SeededSample(ds)[(i, i)] for i in range(0, 500, 50)])
    assert x.shape == (10, 3, 48, 48) and torch.isfinite(x).all()


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as e:
        list_images(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match="contains no images") as e:
        list_images(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)


def test_augmentation_is_seeded_per_sample_without_touching_global_rng():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), np.uint8))
    ds = SeededSample(PretrainImages([img] * 4, pretrain_transform(32)))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a, b, c = ds[(0, 7)], ds[(0, 7)], ds[(0, 8)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_shards_and_resumes():
    spr = 2 * 4  # accum 2 × micro 4
    used = (-(-103 // 3)) // spr * spr  # 35 per rank → 4 whole steps = 32
    shards = [EpochStreamSampler(103, seed=5, rank=r, world=3, used=used) for r in range(3)]
    epoch2 = [list(itertools.islice(iter(s), 3 * used))[2 * used:] for s in shards]
    idx = [[i for i, _ in e] for e in epoch2]
    assert all(len(x) == 32 for x in idx)
    flat = sum(idx, [])
    assert len(set(flat)) == len(flat)  # disjoint shards
    # resume mid-epoch: the tail of the same permutation, with the same per-sample seeds
    resumed = EpochStreamSampler(103, seed=5, rank=1, world=3, used=used, start_epoch=2,
                                 start_offset=16)
    assert list(itertools.islice(iter(resumed), 16)) == epoch2[1][16:]
    epoch3 = list(itertools.islice(iter(resumed), 16, 16 + used))
    assert [i for i, _ in epoch3] != idx[1]  # new epoch, new order
    assert {s for _, s in epoch3}.isdisjoint(s for _, s in epoch2[1])  # new crops too


def test_16bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit grayscale PNG
    rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
    expect = np.rint(ramp / 65535 * 255)
    assert rgb.shape == (64, 64, 3) and np.abs(rgb[..., 0] - expect).max() <= 1
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") clips ~all of it to white
