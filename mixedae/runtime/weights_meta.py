"""What a checkpoint says about itself without loading its tensors: its key names (to check
its layout first; a safetensors file is read from its header only) and the pretraining
``config`` stored with it."""
from __future__ import annotations

import json
from pathlib import Path

from mixedae.runtime.errors import CheckpointError
from mixedae.runtime.weights import (is_safetensors, read_weights, resolve_checkpoint_path,
                                     safetensors_metadata)


def read_key_names(path: str | Path) -> dict[str, None]:
    """The state-dict keys of a checkpoint (values None), for checking its layout before the
    real load: a safetensors file is read from its header only, a torch file whole."""
    path = resolve_checkpoint_path(path)
    if path.is_file() and (path.suffix == ".safetensors" or is_safetensors(path)):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return dict.fromkeys(f.keys())
        except Exception as e:  # damaged header: named, as read_weights does
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return dict.fromkeys(read_weights(path)[0])


def checkpoint_config(path: str | Path) -> dict:
    """The pretraining ``config`` stored with a checkpoint ({} if none): safetensors metadata
    is read from the header only; a torch file is read whole."""
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        return {}
    if path.suffix == ".safetensors":
        meta = safetensors_metadata(path)
    else:
        meta = read_weights(path)[1]
    cfg = meta.get("config", {})
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata 'config' is not valid json ({e})") from None
    return cfg if isinstance(cfg, dict) else {}
