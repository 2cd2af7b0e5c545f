"""The one JPEG decoder behind both pretraining input pipelines (``--decode cpu|gpu``).

``decode_jpegs`` uses TorchCodec (``torchcodec.decoders.decode_jpeg``, libjpeg-turbo on the
CPU, nvJPEG on CUDA) where it is installed and loads, else ``torchvision.io.decode_jpeg``
(deprecated from torchvision 0.29 in favour of TorchCodec; same libraries). ``jpeg_library()``
says which one decodes, so that every benchmark row can name it. ``device_decode_problem``
proves that the library really decodes on a given device (a torchvision built without nvJPEG
must not decode on the CPU under a "gpu" label).

``decode_file`` is the ``--decode cpu`` worker's loader: a JPEG file through ``decode_jpegs``
(on the shared ImageNet JPEGs the pixels equal PIL's: same libjpeg-turbo), anything else —
other formats, JPEG flavours the decoder rejects, in-memory images — through the one image
loader (``runtime.images.load_rgb``: any mode → 8-bit RGB; an undecodable file raises its
``UnreadableImage``, which the datasets name once and substitute).
"""
from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Any, Sequence

import torch
from torchvision.transforms.functional import pil_to_tensor

from mixedae.runtime.images import load_rgb

JPEG_MAGIC = b"\xff\xd8"


@functools.lru_cache(maxsize=None)
def _torchcodec_decode():
    try:
        from torchcodec.decoders import decode_jpeg
        return decode_jpeg
    except Exception:  # not installed, or its native libraries do not load with this torch
        return None


def jpeg_library() -> str:
    """``'torchcodec'`` where TorchCodec is installed and loads, else ``'torchvision.io'``."""
    return "torchcodec" if _torchcodec_decode() is not None else "torchvision.io"


def decode_jpegs(data: Sequence[torch.Tensor], device: str | torch.device = "cpu") -> list:
    """JPEG bytes (1-D uint8 CPU tensors) → list of (3, H, W) uint8 RGB images on ``device``
    (grayscale / CMYK → RGB), one batched call; raises on any image it cannot decode."""
    data, device = list(data), torch.device(device)
    tc = _torchcodec_decode()
    if tc is not None:
        return list(tc(data, mode="RGB", device=device))
    from torchvision.io import ImageReadMode, decode_jpeg
    with warnings.catch_warnings():  # the deprecation is why TorchCodec comes first
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def tiny_jpeg() -> torch.Tensor:
    """A 16×24 colour JPEG (bytes as a uint8 tensor) for decoder probes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 30, 90)).save(buf, format="JPEG", quality=90)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def device_decode_problem(device: str | torch.device) -> str | None:
    """None when ``jpeg_library()`` decodes a JPEG on ``device`` itself, else why not."""
    device = torch.device(device)
    try:
        img = decode_jpegs([tiny_jpeg()], device)[0]
    except Exception as e:
        return (f"{jpeg_library()} cannot decode JPEG on {device} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if img.device.type != device.type or tuple(img.shape) != (3, 16, 24):
        return f"{jpeg_library()} decoded on {img.device} {tuple(img.shape)}, not on {device}"
    return None


def read_bytes(path: str | os.PathLike) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor (empty for an empty file); OSError if unreadable."""
    with open(path, "rb") as f:
        data = f.read()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
        torch.empty(0, dtype=torch.uint8)


def decode_file(src: Any) -> torch.Tensor:
    """A path (or an in-memory image) → (3, H, W) uint8 RGB on the CPU (see module
    docstring); ``UnreadableImage`` naming the file when nothing decodes it."""
    if isinstance(src, (str, os.PathLike)):
        try:
            data = read_bytes(src)
        except OSError:
            data = None  # load_rgb names the problem
        if data is not None and bytes(data[:2]) == JPEG_MAGIC:
            try:
                return decode_jpegs([data])[0]
            except Exception:
                pass  # a flavour or a corruption the decoder rejects: the one image loader
    return pil_to_tensor(load_rgb(src))
