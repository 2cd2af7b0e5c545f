"""The pretraining input pipeline, chosen by ``PretrainConfig.decode`` (``--decode``):

* ``cpu`` — DataLoader workers decode (``decode.decode_file``) and crop + flip
  (``data.PretrainImages.crops()``: uint8 crops); batches are collated as uint8 (4× less
  shared and pinned memory and host→device traffic than float) and normalised on the run's
  device (``data.normalize``), as timm's prefetch loader does. A dataset with another transform
  (float items) is delivered as it is;
* ``gpu`` — workers only read the file bytes (``EncodedSamples``); the main process decodes the
  micro-batch with ``decode_batch`` on the run's device (``decode.decode_jpegs``: nvJPEG on
  CUDA, libjpeg-turbo on CPU tensors) and ``GPUAugment`` crops, resizes, flips and normalises
  it there, just before the step (:mod:`.gpu_augment`). Same augmentation semantics; not
  bit-identical pixels to ``cpu``. On CUDA the decoder must prove that it decodes on the GPU
  (``decode.device_decode_problem``), else ConfigError: never a silent CPU decode.

Both paths draw keys ``(index, seed)`` from the runtime's ``EpochStreamSampler`` through
``SeededSample``. On the gpu path a worker draws each sample's crop/flip uniforms under that
sample's seed, so crops depend only on (seed, epoch, index) — any worker count, exact across a
resume — exactly like the cpu path. A file that cannot be decoded is named once and replaced by
the next readable one (``runtime.images.load_readable``), as on the cpu path: every failure
alike (an empty file, a corrupt one, a format the decoder does not take, an unreadable path).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler
from torchvision.transforms.functional import pil_to_tensor

from mixedae.pretrain.data import normalize
from mixedae.pretrain.decode import device_decode_problem, jpeg_library
from mixedae.pretrain.gpu_augment import EncodedImages, GPUAugment, decode_batch, num_draws
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.images import load_readable
from mixedae.runtime.sampler import SeededSample

DECODES = ("cpu", "gpu")


class EncodedSamples(EncodedImages):
    """Worker side of ``decode='gpu'``: ``(bytes, index, draws)`` per sample. ``draws`` are the
    sample's crop/flip uniforms, taken from the torch RNG (seeded per sample by
    ``SeededSample``). A file that cannot be read gives empty bytes (named when decoded)."""

    def __getitem__(self, index: int):
        try:
            data = super().__getitem__(index)
        except Exception:  # any read failure: empty bytes, named once by the decode side
            data = torch.empty(0, dtype=torch.uint8)
        return data, index, torch.rand(num_draws(), dtype=torch.float64)


def collate_samples(batch: list) -> tuple[list, torch.Tensor, torch.Tensor]:
    data, index, draws = zip(*batch)
    return list(data), torch.tensor(index), torch.stack(draws)


class DeviceAugment:
    """Main-process side of ``decode='gpu'``: a collated batch → normalised (n, 3, S, S) images
    on ``device``. Images torchvision cannot decode go through the one image loader (PIL, any
    mode → RGB) from the file; an unreadable one is named once and the next readable file takes
    its place (with the sample's own crop)."""

    def __init__(self, sources: Sequence, img_size: int, scale: Sequence[float],
                 device: torch.device, reported: set | None = None):
        self.sources, self.device = list(sources), device
        self.reported = set() if reported is None else reported
        self.augment = GPUAugment(img_size, scale)
        if device.type != "cpu":
            problem = device_decode_problem(device)
            if problem:
                raise ConfigError(f"decode='gpu': {problem}; use decode='cpu'")
        self.decoder = f"{jpeg_library()} on {device.type}"

    def _fallback(self, index: int) -> torch.Tensor:
        return pil_to_tensor(load_readable(self.sources, index, self.reported)[1])

    def __call__(self, batch) -> torch.Tensor:
        data, index, draws = batch
        index = index.tolist()
        imgs = decode_batch(data, self.device, lambda i: self._fallback(index[i]))
        return self.augment(imgs, draws=draws)


def file_sources(dataset) -> list:
    """The file paths of ``dataset`` (a ``PretrainImages``) for ``decode='gpu'``; ConfigError
    when it holds in-memory images (the demo). (``decode`` itself is checked by the config.)"""
    sources = getattr(dataset, "sources", None)
    if sources is None or not all(isinstance(s, (str, bytes)) or hasattr(s, "__fspath__")
                                  for s in sources):
        raise ConfigError("decode='gpu' reads image files; this dataset holds in-memory "
                          "images (use decode='cpu')")
    return sources


def pretrain_batches(dataset, sampler: Sampler, *, decode: str, img_size: int,
                     scale: Sequence[float], batch_size: int, num_workers: int,
                     device: torch.device, seed: int) -> Iterator[torch.Tensor]:
    """The engine's stream of augmented micro-batches on ``device`` over ``sampler``'s
    ``(index, seed)`` keys (one DataLoader, persistent workers). ``dataset``: a
    ``PretrainImages`` (for ``cpu`` its uint8 ``crops()``, or its items as they are when its
    transform is not a ``PretrainTransform``; for ``gpu`` its file paths)."""
    finish, collate, pin = (lambda b: b.to(device, non_blocking=True)), None, True
    crops = dataset.crops() if decode == "cpu" and hasattr(dataset, "crops") else None
    if crops is not None:  # uint8 out of the workers, normalised on the device
        dataset, finish = crops, (lambda b: normalize(b.to(device, non_blocking=True)))
    if decode == "gpu":
        sources = file_sources(dataset)
        finish = DeviceAugment(sources, img_size, scale, device,
                               getattr(dataset, "_reported", None))  # named once, both paths
        dataset, collate, pin = EncodedSamples(sources), collate_samples, False
    loader = DataLoader(SeededSample(dataset), batch_size=batch_size, sampler=sampler,
                        drop_last=True, num_workers=num_workers, collate_fn=collate,
                        pin_memory=pin and device.type == "cuda",
                        persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    return map(finish, iter(loader))
