"""Pretraining data: ImageFolder-style images and MAE augmentation.

* ``PretrainImages`` turns a list of sources (file paths, or in-memory PIL images for the demo)
  into augmented tensors through the one image-loading path (:mod:`mixedae.runtime.images`:
  any mode to 8-bit RGB); an unreadable or corrupt file is reported once with its path and
  replaced by the next readable index, so batches stay full.
* Augmentation is RandomResizedCrop(scale=(0.2, 1), bicubic, antialiased) + horizontal flip +
  ImageNet normalisation only (Sec. 4.1), in two stages (``PretrainTransform``): ``crop`` on
  uint8 (3, H, W) tensors (torchvision's uint8 resize, in the loader workers) and ``normalize``
  (a uint8 batch → float, on the run's device, as timm's prefetch loader does). JPEG files are
  decoded by ``decode.decode_file`` (TorchCodec or torchvision.io, PIL for everything else).
  Until this change the crop ran on PIL images (PIL decode, PIL bicubic, float out of the
  workers); the pixels differ by 0.03 grey levels on average (``tools/benchmark_loader.py``
  measures it; README "Input pipeline"). The engine draws samples from the runtime's
  ``EpochStreamSampler`` through ``SeededSample``, so the crops of a sample depend only on
  (seed, epoch, index): reproducible for any worker count, and exact across a resume.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

from mixedae.pretrain.decode import decode_file
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.images import load_readable, load_rgb, require_readable


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W), any device → float32 ImageNet-normalised; the same
    operations as ``ToTensor`` + ``Normalize`` (bit-identical values)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return x.float().div_(255).sub_(mean).div_(std)


class PretrainTransform:
    """MAE pretraining augmentation: ``crop`` (RandomResizedCrop, bicubic, + flip: uint8 →
    uint8) then ``normalize``; called on a PIL image or a uint8 (3, H, W) tensor."""

    def __init__(self, img_size: int, scale: Sequence[float] = (0.2, 1.0)):
        self.crop = v2.Compose([
            v2.RandomResizedCrop(img_size, scale=tuple(scale), antialias=True,
                                 interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip()])

    def __call__(self, img) -> torch.Tensor:
        return normalize(self.crop(img if isinstance(img, torch.Tensor) else pil_to_tensor(img)))


def eval_view(img_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """A photo as the figures (demo, report) show it to the model: short side resized to
    ``img_size`` (bicubic), center crop, ImageNet-normalised float (3, img_size, img_size)."""
    return transforms.Compose([
        transforms.Resize(img_size, transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def pretrain_transform(img_size: int, scale: Sequence[float] = (0.2, 1.0)) -> PretrainTransform:
    """MAE pretraining augmentation: random resized crop + flip, ImageNet normalisation."""
    return PretrainTransform(img_size, scale)


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
    """Augmented images from ``sources`` (paths or PIL images); no labels. ``crops()``: the
    same samples as uint8 crops, not normalised (what ``--decode cpu`` workers return)."""

    def __init__(self, sources: Sequence, transform: Callable, loader: Callable = decode_file):
        self.sources = list(sources)
        self.transform = transform
        self.loader = loader
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.sources)

    def _load(self, index: int) -> Image.Image | torch.Tensor:
        """The image at ``index``, or the next readable one (unreadable files named once)."""
        return load_readable(self.sources, index, self._reported, self.loader)[1]

    def require_readable(self, what: str = "pretraining data") -> None:
        """Refuse a dataset none of whose images can be read (before building a model)."""
        require_readable(self.sources, what, self.loader, self._reported)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self._load(index))

    def crops(self) -> "UInt8Crops | None":
        """The uint8 view (None when the transform is not a ``PretrainTransform``)."""
        return UInt8Crops(self) if isinstance(self.transform, PretrainTransform) else None


class UInt8Crops(Dataset):
    """``PretrainImages`` items before ``normalize``: uint8 (3, S, S) crops, same RNG draws."""

    def __init__(self, images: PretrainImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = self.images._load(index)
        return self.images.transform.crop(img if isinstance(img, torch.Tensor)
                                          else pil_to_tensor(img))


def build_pretrain_dataset(root: str | os.PathLike, img_size: int,
                           scale: Sequence[float] = (0.2, 1.0)) -> PretrainImages:
    ds = PretrainImages(list_images(root), pretrain_transform(img_size, scale))
    ds.require_readable(f"dataset folder {root}")
    return ds


# the demo's data (also the report's default images)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
                  "immunohistochemistry", "retina", "coins", "moon", "clock", "brick", "grass",
                  "gravel")

def packaged_photos() -> dict[str, Image.Image]:
    """Real photographs bundled with scikit-image / scikit-learn (those that load offline)."""
    photos = {}
    try:
        import skimage.data
        for name in SKIMAGE_PHOTOS:
            try:
                arr = getattr(skimage.data, name)()
            except Exception:  # not bundled in this version (needs pooch / a download)
                continue
            if arr.dtype == np.uint8 and min(arr.shape[:2]) >= 128:
                photos[name] = Image.fromarray(arr)
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images
        data = load_sample_images()
        for fname, arr in zip(data.filenames, data.images):
            photos[Path(fname).stem] = Image.fromarray(arr)
    except ImportError:
        pass
    if len(photos) < 4:
        raise ConfigError("the demo needs scikit-image and/or scikit-learn sample images "
                           f"(found {len(photos)}); pip install scikit-image scikit-learn")
    # pre-shrink (short side 256) so that cropping stays cheap; crops are ≤ 64-112 px anyway
    return {k: v2.Resize(256, v2.InterpolationMode.BICUBIC)(load_rgb(v))
            for k, v in photos.items()}
