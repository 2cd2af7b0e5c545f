"""Atomic, exactly-resumable pretraining checkpoints (+ a safetensors copy of the weights).

``checkpoint.pth`` holds the model, optimizer, grad scaler, step / epoch / step-within-epoch,
the RNG states of every rank (python, numpy, torch CPU, CUDA) and the config JSON. Everything
is stored as tensors or plain Python types, so it loads with ``torch.load(weights_only=True)``.
Files are written to a temporary file in the same folder, fsync'ed and ``os.replace``'d: a
crash mid-write leaves the previous checkpoint intact, never a half-written one.
``model.safetensors`` holds only the model weights with metadata {"config": json, "step": str}.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from mixedae.runtime.errors import CheckpointError
from mixedae.runtime.weights import CHECKPOINT_NAME, WEIGHTS_NAME, load_into  # noqa: F401 (re-exported)



# ---- atomic writes ---------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ---- RNG state (tensors / plain types only) --------------------------------------------------
def rng_state() -> dict:
    """This process's python / numpy / torch (CPU, current CUDA device) RNG states."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": torch.tensor(mt, dtype=torch.int64), "python_version": version,
        "python_gauss": gauss,
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (also the plain-list layout that fine-tuning
    checkpoints of version 0.1 used)."""
    if not isinstance(state.get("python"), torch.Tensor):  # legacy plain-list layout
        py, n = state["python"], state["numpy"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        return
    random.setstate((state["python_version"], tuple(state["python"].tolist()),
                     state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- model state -----------------------------------------------------------------------------
def load_model_state(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Strict load that fails with one line naming missing / unexpected / mis-shaped keys."""
    load_into(model, state_dict, what=f"{source} does not match the model")


# ---- checkpoint files ------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer, scaler, cfg,
                    step: int, epoch: int, step_in_epoch: int, rng: list[dict]) -> None:
    """Atomically write a resumable checkpoint. ``rng``: one ``rng_state()`` per rank."""
    atomic_torch_save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
        "rng": rng,
        "config": cfg.to_json(),
    }, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (weights_only, onto the CPU)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """'auto' → ``<output_dir>/checkpoint.pth`` if present (else None); a path must exist."""
    if not resume:
        return None
    if resume == "auto":
        p = Path(output_dir) / CHECKPOINT_NAME
        return p if p.is_file() else None
    if not os.path.isfile(resume):
        raise CheckpointError(f"--resume {resume}: no such checkpoint file")
    return Path(resume)


def save_safetensors(path: str | os.PathLike, model: nn.Module, cfg, step: int) -> None:
    """Model weights as safetensors with metadata {"config": cfg.to_json(), "step": str}."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": cfg.to_json(), "step": str(step)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state_dict, metadata) of a ``model.safetensors``."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
