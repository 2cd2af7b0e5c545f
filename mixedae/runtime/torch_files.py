"""Reading checkpoint files safely: every failure is a :class:`CheckpointError` naming the file.

* torch files are only ever read with ``torch.load(weights_only=True)``: a pickle that needs
  code is refused, never run (not even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``: the
  argument is explicit);
* a checkpoint written by an mmengine ``Runner`` (``tools/train.py``) also holds the
  message hub: ``HistoryBuffer`` objects with numpy arrays / scalars, which plain
  ``weights_only`` refuses. When those (and only those) globals stand in the way, the file is
  read again with numpy's array/scalar rebuilders and the dtype classes allow-listed and every
  ``HistoryBuffer`` replaced by an inert stand-in (no mmengine import, nothing executed;
  ``getattr`` is answered only for the stand-in). The weights are unaffected. The
  ``argparse.Namespace`` of the options that DINO / iBOT store beside their weights is
  allowed the same way (an attribute container: no code runs);
* safetensors files are read here too (the one reader): their headers without the tensors
  (metadata, key names, the stored step), or whole;
* a file that is no torch checkpoint at all is named for what it is (empty, text, a plain
  pickle, a numpy array, ...), without torch's warnings about it.
"""
from __future__ import annotations

import json
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mixedae.runtime.errors import CheckpointError

HISTORY_BUFFER = "mmengine.logging.history_buffer.HistoryBuffer"


class _Inert:
    """Stands in for an mmengine ``HistoryBuffer`` while unpickling: keeps no state."""

    def __setstate__(self, state) -> None:
        pass


def _inert_getattr(obj, name: str):
    if obj is _Inert and isinstance(name, str):
        return None  # HistoryBuffer pickles getattr(HistoryBuffer, '<statistic>')
    raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not allowed while reading "
                                 f"weights")


def numpy_globals() -> dict[str, object]:
    """Qualified name → object: numpy's array / scalar rebuilders and dtype classes (numpy 1.x
    and 2.x names), which mmengine Runner checkpoints pickle. The one numpy allow-list: this
    reader and the mmengine patch (:mod:`mixedae.mm.compat`) both use it."""
    from numpy._core.multiarray import _reconstruct, scalar
    out: dict[str, object] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out[f"{mod}._reconstruct"], out[f"{mod}.scalar"] = _reconstruct, scalar
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                 "uint64", "float16", "float32", "float64"):
        cls = type(np.dtype(name))  # numpy 2 may pickle dtypes through their classes
        out[f"numpy.dtypes.{cls.__name__}"] = cls
    return out


def _mmengine_globals() -> dict[str, object]:
    """Qualified name → allowed object, for mmengine Runner checkpoints read without mmengine."""
    import argparse  # DINO / iBOT checkpoints store their argparse.Namespace (plain values)
    return {**numpy_globals(), HISTORY_BUFFER: _Inert, "builtins.getattr": _inert_getattr,
            "argparse.Namespace": argparse.Namespace}


def _why(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    hit = [i for i, x in enumerate(lines) if x.endswith("WeightsUnpickler error:")]
    line = lines[hit[0] + 1] if hit and hit[0] + 1 < len(lines) else (lines[0] if lines else "")
    return f"{type(e).__name__}: {line[:300]}" if line else type(e).__name__


@contextmanager
def _quiet_torch_load():
    """torch.load's UserWarnings about a file it then fails to read (a plain pickle: "Detected
    pickle protocol N ...") stay out of the one error line's way."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
        yield


_MAGIC = [(b"\x93NUMPY", "a numpy .npy array"), (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
          (b"\x1f\x8b", "a gzip-compressed file"),
          (b"PK\x03\x04", "a zip archive, damaged or not written by torch.save"),
          # torch.save's legacy (non-zip) format: a pickled magic number first
          (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
           "a damaged torch.save file (legacy format)")]


def describe_file(path: str | Path) -> str:
    """What a file that torch cannot read is, from its first bytes (for error lines)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return f"a plain pickle (protocol {head[1]}), not a torch.save file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\0" not in text:
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (starts with {first!r})"
    return f"not a torch file (starts with bytes {head[:8].hex(' ')})"


def _unreadable(path: str, e: BaseException) -> CheckpointError:
    what = describe_file(path)
    cause = f" ({_why(e)})" if what.startswith(("a zip", "a damaged", "not a torch")) else ""
    return CheckpointError(f"{path}: not a readable torch checkpoint: {what}{cause}")


def load_weights_only(path: str | Path, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` onto the CPU (mmengine Runner checkpoints
    too, see module docstring); CheckpointError naming the file on any failure. ``mmap``:
    tensors are mapped, not read (a cheap check of the file's structure)."""
    path = str(path)
    try:
        with _quiet_torch_load():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = e
    except Exception as e:  # truncated / not a zip / not a torch file at all
        raise _unreadable(path, e) from None
    try:
        with _quiet_torch_load():
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        unsafe = {"?"}
    allowed = _mmengine_globals()
    if unsafe and unsafe <= set(allowed):
        # only what is not registered yet: leaving the context removes its entries, and an
        # entry registered before (mm/compat's) must stay registered
        known = set(torch.serialization.get_safe_globals())
        extra_globals = [(v, k) for k, v in allowed.items() if (v, k) not in known]
        with torch.serialization.safe_globals(extra_globals), _quiet_torch_load():
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except Exception as e:
                first = e
    extra = sorted(unsafe - set(allowed) - {"?"})
    if not extra:
        raise _unreadable(path, first) from None
    raise CheckpointError(
        f"{path}: refused by torch.load(weights_only=True): unpickling it would need "
        f"{', '.join(extra[:6])}; export a safetensors file or a plain tensor state dict") from None


def _safe_open(path: str | Path):
    """The file's safetensors handle; CheckpointError naming it when its header is unreadable."""
    from safetensors import safe_open
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_why(e)})") from None


def safetensors_metadata(path: str | Path) -> dict:
    """The metadata of a safetensors file (header only; values are the stored strings)."""
    with _safe_open(path) as f:
        return dict(f.metadata() or {})


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file (header only)."""
    with _safe_open(path) as f:
        return list(f.keys())


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors on the CPU, metadata) of a safetensors file; CheckpointError naming the file
    when its header is unreadable or its data is truncated."""
    with _safe_open(path) as f:
        meta = dict(f.metadata() or {})
        try:
            return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:  # truncated data after a valid header
            raise CheckpointError(f"{path}: damaged safetensors file ({e})") from None


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file (by its header: 8-byte length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def stored_step(path: str | Path) -> int | None:
    """The training step a checkpoint / weights file was written at (None if not recorded).
    A torch file is memory-mapped, so its tensors are not read."""
    path = Path(path)
    if is_safetensors(path):
        step = safetensors_metadata(path).get("step")
        try:
            return int(json.loads(step)) if step is not None else None
        except (TypeError, ValueError):
            return None
    try:
        with _quiet_torch_load():
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    step = obj.get("step") if isinstance(obj, dict) else None
    return int(step) if isinstance(step, int) else None
