"""Pretraining data: ImageFolder-style images, MAE augmentation and a resumable sharded sampler.

* ``PretrainImages`` turns a list of sources (file paths, or in-memory PIL images for the demo)
  into augmented tensors. Every image is converted to RGB (grayscale, CMYK, palette); an
  unreadable or corrupt file is reported once with its path and replaced by the next readable
  index, so batches stay full.
* Augmentation is RandomResizedCrop(scale=(0.2, 1), bicubic) + horizontal flip + ImageNet
  normalisation only (Sec. 4.1). Its randomness is seeded per sample from (seed, epoch, index)
  by the sampler, so data is reproducible independent of worker count, and a resumed run sees
  exactly the crops it would have seen.
* ``ResumableSampler`` is a ``DistributedSampler`` (shuffle, drop_last) truncated to whole
  optimizer steps that can start part-way through an epoch.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import Dataset, DistributedSampler
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from mixedae.runtime.errors import ConfigError

log = logging.getLogger(__name__)


def pretrain_transform(img_size: int, scale: Sequence[float] = (0.2, 1.0)) -> Callable:
    """MAE pretraining augmentation: random resized crop + flip, ImageNet normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=tuple(scale),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_rgb(src) -> Image.Image:
    """Open a path (or take a PIL image) and return a fully decoded RGB image."""
    img = src if isinstance(src, Image.Image) else Image.open(src)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB")


def list_images(root: str | os.PathLike) -> list[str]:
    """Sorted image files under ``root`` (ImageFolder layout ``root/<class>/*.jpg`` or flat).

    Raises ConfigError naming the path when it does not exist or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"dataset folder {root} does not exist")
    exts = tuple(IMG_EXTENSIONS)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root, followlinks=True)
                   for f in fs if f.lower().endswith(exts))
    if not files:
        raise ConfigError(f"dataset folder {root} contains no images ({', '.join(exts)})")
    return files


class PretrainImages(Dataset):
    """Augmented images from ``sources`` (paths or PIL images); no labels.

    Indexed by an int or by ``(index, seed)`` from ``ResumableSampler``; with a seed the
    transform runs under that torch seed without touching the global RNG.
    """

    def __init__(self, sources: Sequence, transform: Callable, loader: Callable = load_rgb):
        self.sources = list(sources)
        self.transform = transform
        self.loader = loader
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.sources)

    def _load(self, index: int) -> Image.Image:
        n = len(self.sources)
        for i in range(n):
            src = self.sources[(index + i) % n]
            try:
                return self.loader(src)
            except Exception as e:  # corrupt / truncated / unreadable: skip, report once
                if str(src) not in self._reported:
                    self._reported.add(str(src))
                    log.warning("skipping unreadable image %s (%s: %s)", src,
                                type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        raise RuntimeError(f"no readable image among {n} sources")

    def __getitem__(self, key) -> torch.Tensor:
        index, seed = key if isinstance(key, tuple) else (key, None)
        img = self._load(index)
        if seed is None:
            return self.transform(img)
        with torch.random.fork_rng(devices=[]):  # CPU generator only; CUDA RNG untouched
            torch.default_generator.manual_seed(seed)
            return self.transform(img)


def build_pretrain_dataset(root: str | os.PathLike, img_size: int,
                           scale: Sequence[float] = (0.2, 1.0)) -> PretrainImages:
    return PretrainImages(list_images(root), pretrain_transform(img_size, scale))


class ResumableSampler(DistributedSampler):
    """Shuffled per-rank shard holding ``steps_per_epoch · samples_per_step`` indices.

    Yields ``(index, seed)``; the seed, a function of (seed, epoch, index), drives the
    augmentation. ``set_epoch(epoch, start)`` skips the first ``start`` samples of this rank's
    shard (the micro-batches already consumed before a checkpoint).
    """

    def __init__(self, dataset, samples_per_step: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.samples_per_step = samples_per_step
        self.steps_per_epoch = self.num_samples // samples_per_step
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return self.steps_per_epoch * self.samples_per_step - self.start

    def __iter__(self):
        idx = list(super().__iter__())[self.start:self.steps_per_epoch * self.samples_per_step]
        base = ((self.seed * 1_000_003 + self.epoch) * 2_147_483_629) % 2 ** 62
        return iter([(i, (base + i) % 2 ** 62) for i in idx])
