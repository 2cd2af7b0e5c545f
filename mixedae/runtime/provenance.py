"""Which checkpoint produced a result: the record a producer writes beside its result, and the
check a reader makes before crediting the result to a pretraining run.

A record is ``{"path": absolute resolved path, "size": bytes, "sha256": hex digest, "step":
training step from the file's metadata or None}``. The digest is of the file's bytes, so a copy
of the same weights matches and a later checkpoint of the same run folder does not. Where it is
written: a result's ``result.json`` / summary under the key ``"pretrained"`` (``mixedae
finetune`` / ``transfer`` / ``linprobe`` / ``knn``), ``<work_dir>/pretrained.json`` for an
mmengine work dir, and the stage marker of ``mixedae pipeline`` (``OUT/stages/<stage>.json``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

_CACHE: dict[tuple, str] = {}


def sha256(path: str | Path) -> str:
    """Hex digest of the file's bytes (cached per path, size and mtime in this process)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def checkpoint_record(path: str | Path) -> dict:
    """The record of the checkpoint ``path`` stands for (a run folder: its weights file)."""
    from mixedae.runtime.torch_files import stored_step
    from mixedae.runtime.weights import resolve_checkpoint_path
    f = resolve_checkpoint_path(path).resolve()
    return {"path": str(f), "size": f.stat().st_size, "sha256": sha256(f),
            "step": stored_step(f)}


def pretrained_record(path: str | Path | None) -> dict | None:
    """What a command records under ``"pretrained"`` for its ``--checkpoint``: the record of
    ``path``, or None for a run from random initialisation (no checkpoint given)."""
    return checkpoint_record(path) if path else None


def is_record(rec) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and \
        isinstance(rec.get("size"), int)


def matches(rec: dict, files) -> Path | None:
    """The file among ``files`` whose bytes the record names (size first, then digest)."""
    if not is_record(rec):
        return None
    for f in files:
        f = Path(f)
        if f.is_file() and f.stat().st_size == rec["size"] and sha256(f) == rec["sha256"]:
            return f
    return None
