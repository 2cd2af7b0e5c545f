"""The autocast precision of every engine: ``--amp`` (bf16 / fp16 / none) to a dtype, and the
autocast context of that dtype (none off CUDA)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from mixedae.runtime.errors import ConfigError

AMP = ("bf16", "fp16", "none")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (``bf16`` / ``fp16`` / ``none``); None off CUDA."""
    if amp not in AMP:
        raise ConfigError(f"amp={amp!r} must be one of {', '.join(AMP)}")
    if device.type != "cuda" or amp == "none":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype``, or no autocast when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
