"""Batched JPEG decode and MAE augmentation on the accelerator (optional input pipeline).

Same semantics as ``data.pretrain_transform`` (Sec. 4.1): RandomResizedCrop with scale
(0.2, 1) and ratio (3/4, 4/3) — torchvision's sampling rule, 10 tries then the central crop
with the ratio clamped —, bicubic resize (antialiased, as PIL does when it shrinks), horizontal
flip with p = 0.5, ImageNet normalisation. Workers only read file bytes (``EncodedImages``);
``decode.decode_jpegs`` (TorchCodec or torchvision.io, nvJPEG on CUDA) decodes a whole batch on
the GPU and ``GPUAugment`` crops, resizes, flips and normalises it there. Every step runs on
CPU tensors too (that is how it is tested); only the speed needs a GPU
(``tools/benchmark_loader.py``). The engine uses it through ``input_pipeline``
(``--decode gpu``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import Dataset

from mixedae.pretrain.decode import decode_jpegs, read_bytes


class EncodedImages(Dataset):
    """File bytes as a uint8 tensor (no decode in the workers); keys like ``PretrainImages``."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> torch.Tensor:
        index = key[0] if isinstance(key, tuple) else key
        return read_bytes(self.paths[index])


def decode_batch(data: list, device: str | torch.device = "cuda",
                 fallback: Callable[[int], torch.Tensor] | None = None) -> list:
    """JPEG bytes → list of (3, H, W) uint8 RGB images on ``device`` (grayscale/CMYK → RGB).

    A batch the batched decoder rejects (a PNG among the JPEGs, a JPEG flavour nvJPEG does not
    take, a corrupt or empty file) is decoded image by image on ``device``; an image that fails
    there, whatever the error, comes from ``fallback(i)`` (moved to ``device``; default: the
    error)."""
    try:
        if all(d.numel() for d in data):
            return decode_jpegs(data, device)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception:  # every decode failure alike: image by image below
        pass
    return [_decode_one(d, i, device, fallback) for i, d in enumerate(data)]


def _decode_one(data: torch.Tensor, i: int, device, fallback) -> torch.Tensor:
    try:
        if data.numel():
            return decode_jpegs([data], device)[0]
        error: Exception = ValueError("empty file")
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:
        error = e
    if fallback is None:
        raise error
    return fallback(i).to(device)


def num_draws(tries: int = 10) -> int:
    """Uniform draws per image: ``tries`` areas, ``tries`` log-ratios, top, left, flip."""
    return 2 * tries + 3


def crop_params(sizes: torch.Tensor, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10,
                generator: torch.Generator | None = None,
                draws: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for a batch: ``sizes`` (n, 2) = (H, W),
    returns (n, 4) long (top, left, h, w). Each image takes its first of ``tries`` valid draws,
    else the central crop with the aspect ratio clamped to ``ratio``. The randomness is
    ``draws`` (n, >= 2·tries + 2) uniforms in [0, 1) when given (one row per image, e.g. from
    per-sample seeds), else drawn from ``generator``."""
    n = sizes.shape[0]
    if draws is None:
        draws = torch.rand(n, 2 * tries + 2, dtype=torch.float64, generator=generator)
    draws = draws.double()
    H, W = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = H * W * (scale[0] + (scale[1] - scale[0]) * draws[:, :tries])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = (lo + (hi - lo) * draws[:, tries:2 * tries]).exp()
    w, h = (area * r).sqrt().round(), (area / r).sqrt().round()
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = torch.where(ok.any(1), ok.float().argmax(1), -1)
    u = draws[:, 2 * tries:2 * tries + 2]
    pick = first.clamp(min=0)[:, None]
    h, w = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0]
    top = (u[:, 0] * (H[:, 0] - h + 1)).floor()
    left = (u[:, 1] * (W[:, 0] - w + 1)).floor()
    # fallback: central crop, ratio clamped (torchvision's rule)
    in_r = W[:, 0] / H[:, 0]
    fw = torch.where(in_r < ratio[0], W[:, 0], torch.where(in_r > ratio[1],
                     (H[:, 0] * ratio[1]).round(), W[:, 0]))
    fh = torch.where(in_r < ratio[0], (W[:, 0] / ratio[0]).round(), H[:, 0])
    bad = first < 0
    h, w = torch.where(bad, fh, h), torch.where(bad, fw, w)
    top = torch.where(bad, ((H[:, 0] - h) / 2).floor(), top)
    left = torch.where(bad, ((W[:, 0] - w) / 2).floor(), left)
    return torch.stack([top, left, h, w], 1).long()


class GPUAugment:
    """uint8 (3, H, W) images (a list, any sizes, one device) → normalised (n, 3, S, S) batch.

    The crop boxes and flips are computed on the CPU from per-image uniform draws (given, or
    from ``generator``: cheap, reproducible); the pixel work runs where the images are.
    """

    def __init__(self, img_size: int, scale: Sequence[float] = (0.2, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 dtype: torch.dtype = torch.float32):
        self.size, self.scale, self.ratio = img_size, tuple(scale), tuple(ratio)
        self.flip_p, self.dtype = flip_p, dtype

    def params(self, images: list, generator: torch.Generator | None = None,
               draws: torch.Tensor | None = None):
        """Crop boxes and flips from ``draws`` ((n, ``num_draws()``) uniforms, last column the
        flip) when given, else from ``generator``."""
        sizes = torch.tensor([img.shape[-2:] for img in images])
        if draws is None:
            draws = torch.rand(len(images), num_draws(), dtype=torch.float64, generator=generator)
        boxes = crop_params(sizes, self.scale, self.ratio, draws=draws[:, :-1])
        return boxes, draws[:, -1] < self.flip_p

    def __call__(self, images: list, generator: torch.Generator | None = None,
                 draws: torch.Tensor | None = None):
        boxes, flips = self.params(images, generator, draws)
        return self.apply(images, boxes, flips)

    def apply(self, images: list, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        dev = images[0].device
        out = torch.empty(len(images), 3, self.size, self.size, device=dev, dtype=torch.float32)
        for i, (img, (t, l, h, w)) in enumerate(zip(images, boxes.tolist())):
            crop = img[None, :, t:t + h, l:l + w].float()
            out[i] = F.interpolate(crop, size=(self.size, self.size), mode="bicubic",
                                   align_corners=False, antialias=True)[0]
        out = torch.where(flips.to(dev)[:, None, None, None], out.flip(-1), out)
        mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255
        return ((out.clamp_(0, 255) - mean) / std).to(self.dtype)
