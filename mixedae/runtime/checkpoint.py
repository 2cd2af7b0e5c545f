"""Atomic, exactly-resumable pretraining checkpoints (+ a safetensors copy of the weights).

``checkpoint.pth`` holds the model, optimizer, grad scaler, step / epoch / step-within-epoch,
the RNG states of every rank (python, numpy, torch CPU, CUDA) and the config JSON. Everything
is stored as tensors or plain Python types, so it loads with ``torch.load(weights_only=True)``.
Every file is written atomically (:mod:`mixedae.runtime.atomic`): a crash mid-write leaves the previous checkpoint intact, never a
half-written one, and a failed write is an ``OSError`` naming the file and the cause.
``model.safetensors`` holds only the model weights with metadata {"config": json, "step": str};
:func:`save_run` writes it and ``checkpoint.pth`` as one pair.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from mixedae.runtime.atomic import atomic_torch_save, atomic_write, atomic_write_many, \
    safetensors_writer, torch_save
from mixedae.runtime.errors import CheckpointError
from mixedae.runtime.torch_files import is_safetensors, load_weights_only, stored_step
from mixedae.runtime.weights import CHECKPOINT_NAME, WEIGHTS_NAME, load_into

log = logging.getLogger(__name__)


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
RESUME_KEYS = ("model", "optimizer", "step", "rng")


def checkpoint_state(*, model: nn.Module, optimizer, scaler, cfg, step: int, epoch: int,
                     step_in_epoch: int, rng: list[dict], extra: dict | None = None) -> dict:
    """The resumable state of a pretraining run. ``rng``: one ``rng_state()`` per rank."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "rng": rng,
            "config": cfg.to_json(), **(extra or {})}


def save_checkpoint(path: str | os.PathLike, **state) -> None:
    """Atomically write a resumable checkpoint (keyword arguments of :func:`checkpoint_state`)."""
    atomic_torch_save(checkpoint_state(**state), path)


def _safetensors_writer(model: nn.Module, cfg, step: int) -> Callable[[str], None]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return safetensors_writer(tensors, {"config": cfg.to_json(), "step": str(step)})


def save_run(out_dir: str | os.PathLike, **state) -> None:
    """``checkpoint.pth`` + ``model.safetensors`` of the same step as one atomic pair: both
    are written to temp files first, then renamed (checkpoint first). A crash can at worst
    leave the weights file one save behind, which readers detect from the stored steps
    (:func:`mixedae.runtime.weights.resolve_checkpoint_path`) and a resume repairs."""
    out_dir = Path(out_dir)
    obj = checkpoint_state(**state)
    atomic_write_many([
        (out_dir / CHECKPOINT_NAME, lambda tmp: torch_save(obj, tmp)),
        (out_dir / WEIGHTS_NAME, _safetensors_writer(state["model"], state["cfg"],
                                                     state["step"]))])


def repair_weights(out_dir: str | os.PathLike, model: nn.Module, cfg, step: int) -> None:
    """Rewrite ``model.safetensors`` when it is missing or from another step than the
    checkpoint just resumed (a run stopped between the two renames of :func:`save_run`)."""
    path = Path(out_dir) / WEIGHTS_NAME
    if not path.is_file() or stored_step(path) != step:
        log.info("rewriting %s for step %d (it was missing or from another step)", path, step)
        save_safetensors(path, model, cfg, step)


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = RESUME_KEYS,
                    mmap: bool = False) -> dict:
    """Load a resumable checkpoint (weights_only, onto the CPU); one CheckpointError line for
    a missing, damaged or foreign file (a weights-only ``model.safetensors`` included).
    ``mmap=True`` checks a file cheaply (tensors are mapped, not read)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        raise CheckpointError(f"{path} holds model weights only (safetensors), not a resumable "
                              f"checkpoint: resume from {Path(path).parent / CHECKPOINT_NAME}")
    state = load_weights_only(path, mmap=mmap)
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a resumable checkpoint of this project (missing "
                              f"{', '.join(missing)})")
    return state


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """'auto' → ``<output_dir>/checkpoint.pth`` if present (else None); a run directory
    means its ``checkpoint.pth``; a path must exist. The file's structure is checked (cheaply,
    see :func:`load_checkpoint`), so a wrong file is refused before any model is built."""
    if not resume:
        return None
    if resume == "auto":
        p = Path(output_dir) / CHECKPOINT_NAME
        if not p.is_file():
            return None
    else:
        p = Path(resume) / CHECKPOINT_NAME if os.path.isdir(resume) else Path(resume)
        if not p.is_file():
            raise CheckpointError(f"--resume {resume}: no such checkpoint file")
    if is_safetensors(p):
        raise CheckpointError(f"--resume {resume} holds model weights only (safetensors), not a "
                              f"resumable checkpoint: pass {p.parent / CHECKPOINT_NAME} or 'auto'")
    load_checkpoint(p, mmap=True)
    return p


def save_safetensors(path: str | os.PathLike, model: nn.Module, cfg, step: int) -> None:
    """Model weights as safetensors with metadata {"config": cfg.to_json(), "step": str}."""
    atomic_write(path, _safetensors_writer(model, cfg, step))

