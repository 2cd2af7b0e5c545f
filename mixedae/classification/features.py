"""Frozen features of a whole dataset, extracted once and cached atomically.

The dataset is cut into chunks of ``chunk`` consecutive examples; every rank extracts its share
of a chunk (examples ``start + rank, start + rank + world, ...``, :func:`~mixedae.classification.evaluation.predict`) and
writes it atomically as one piece file, so an interrupted extraction resumes at the first
missing piece. When every piece exists, rank 0 assembles ``<cache>.pt`` (atomic) and removes
the pieces; a cache whose ``key`` (checkpoint, model, transform, image list) differs from the
request is recomputed. Features are stored in fp16.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from mixedae.classification.evaluation import predict
from mixedae.runtime.atomic import atomic_torch_save
from mixedae.runtime.distributed import barrier, get_rank, get_world_size, is_main_process
from mixedae.runtime.run_logger import RunLogger


def images_digest(images) -> str:
    """sha1 of an image list (paths as text; in-memory arrays by their bytes)."""
    h = hashlib.sha1()
    for x in images:
        h.update(x.tobytes() if hasattr(x, "tobytes") else str(x).encode())
        h.update(b"\0")
    return h.hexdigest()


def _load(path: Path, key: dict) -> torch.Tensor | None:
    if not path.is_file():
        return None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["feats"] if obj.get("key") == json.dumps(key, sort_keys=True) else None


def _piece_path(parts: Path, start: int) -> Path:
    return parts / f"c{start:09d}_r{get_rank()}of{get_world_size()}.pt"


def cached_features(model: torch.nn.Module, dataset: Dataset, cache: Path, key: dict, *,
                    batch_size: int, device: torch.device, workers: int = 0, amp: bool = True,
                    chunk: int = 50_000, logger: RunLogger | None = None) -> torch.Tensor:
    """(N, D) fp16 features of ``dataset`` under ``model`` (its forward output), from
    ``cache`` when it holds the same ``key``, else extracted (resumably) and cached."""
    cache = Path(cache)
    feats = _load(cache, key)
    if feats is not None:
        if logger is not None:
            logger.info(f"[knn] features from cache {cache}")
        return feats
    n, k = len(dataset), json.dumps(key, sort_keys=True)
    parts = cache.with_suffix(".parts")
    if is_main_process():
        parts.mkdir(parents=True, exist_ok=True)
    barrier()
    for start in range(0, n, chunk):
        piece = _piece_path(parts, start)
        if _load(piece, key) is not None:
            if logger is not None:
                logger.step(len(range(start + get_rank(), min(start + chunk, n),
                                      get_world_size())))
            continue
        out, _ = predict(model, Subset(dataset, range(start, min(start + chunk, n))),
                         batch_size, device, workers, amp,
                         on_batch=logger.step if logger is not None else None)
        atomic_torch_save({"key": k, "feats": out.half()}, piece)
    barrier()
    if is_main_process():
        _assemble(parts, cache, n, chunk, k)
    barrier()
    return _load(cache, key)


def _assemble(parts: Path, cache: Path, n: int, chunk: int, key: str) -> None:
    """Interleave every rank's pieces back into dataset order; write the cache; drop pieces."""
    world = get_world_size()
    feats = None
    for start in range(0, n, chunk):
        for r in range(world):
            obj = torch.load(parts / f"c{start:09d}_r{r}of{world}.pt", map_location="cpu",
                             weights_only=True)
            if obj["feats"].numel() == 0:  # fewer examples in the chunk than ranks
                continue
            if feats is None:
                feats = torch.empty(n, obj["feats"].shape[1], dtype=torch.float16)
            feats[start + r:min(start + chunk, n):world] = obj["feats"]
    atomic_torch_save({"key": key, "feats": feats}, cache)
    shutil.rmtree(parts, ignore_errors=True)
