"""The one weight loader: reading checkpoint files, recognising their layout, checking them
against a model and loading them with a report — for every consumer (pretraining resume,
fine-tuning / transfer, the OpenMMLab backbone, ``mixedae convert``).

Sources (detected from the keys, after unwrapping ``{"model"|"state_dict"|"module"|"teacher": ...}`` and
a DDP ``module.`` prefix):

* ``pretrain``  our pretraining model: ``encoder.<vit keys>``, ``decoder.*``, ``projector.*``
  (``<dir>/model.safetensors`` or ``<dir>/checkpoint.pth``; a directory is accepted);
* ``mm``        an mmseg/mmdet checkpoint: ``backbone.<vit keys | adapter keys>`` + task heads;
* ``vit``       flat ViT keys: official MAE (``decoder_*``/``mask_token`` dropped), timm, MAE
  fine-tuned (``fc_norm``/``head``), or a file written by ``mixedae convert``;
* ``dino``      a DINO / iBOT training checkpoint: its ``teacher`` (what their evaluation
  reads), ``backbone.<vit keys>`` kept, the projection ``head.*`` and iBOT's ``masked_embed``
  dropped; layer scale (iBOT ``gamma_1``/``gamma_2``) is refused as unknown keys. Their
  released backbone-only files are flat ``vit`` keys;
* ``mmpretrain`` an mmpretrain ``VisionTransformer`` / MAE checkpoint (``backbone.layers.N``):
  key names renamed as mmpretrain's ``TransformerEncoderLayer`` / mmcv's ``PatchEmbed`` and
  ``FFN`` define them (``ln1``/``ln2`` → ``norm1``/``norm2``, ``ffn.layers.0.0`` / ``ffn.layers.1``
  → ``mlp.fc1`` / ``mlp.fc2``, ``patch_embed.projection`` → ``patch_embed.proj``, the final
  ``ln1`` → ``norm``); the MAE decoder (``neck.*``) and heads are dropped; layer scale
  (``gamma1``/``gamma2``), ``pre_norm`` and the ``avg_featmap`` norm ``ln2`` have no place in
  our ViT and are refused as unknown keys.

Everything dropped is reported by group (decoder, projector, mask token, ...); any key that is
not known is an error naming it — nothing is silently ignored. Torch files are read with
``weights_only=True`` (a pickle that needs code is refused, never run; mmengine Runner
checkpoints are read too: :mod:`mixedae.runtime.torch_files`). Integer tensors never stand
in for floating-point ones (a dtype mismatch is an error); fp16 / bf16 become fp32 exactly.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn

from mixedae.runtime.errors import CheckpointError, format_names
from mixedae.runtime.torch_files import (is_safetensors, load_weights_only, read_safetensors,
                                         safetensors_keys, safetensors_metadata, stored_step)

CHECKPOINT_NAME = "checkpoint.pth"
WEIGHTS_NAME = "model.safetensors"

TARGETS = ("mm", "timm", "vit", "classifier")

# keys of mixedae.model.vit.VisionTransformer (== timm / MAE layout)
VIT_KEY = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|blocks\.\d+\.attn\.relative_position_bias_table"
    r"|(norm|fc_norm|head)\.(weight|bias))$")
# the 4-scale adapter of the mm backbone (BEiT/iBOT fpn1..fpn4)
ADAPTER_KEY = re.compile(r"^fpn[1-4]\.\d+\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
HEAD_KEY = re.compile(r"^(norm|fc_norm|head)\.(weight|bias)$")
REL_POS_KEY = re.compile(r"^blocks\.\d+\.attn\.relative_position_bias_table$")

# knowingly dropped groups: (regex on the key as found, reason)
_PRETRAIN_DROP = [
    (re.compile(r"^((en|de)coder\.)?mask_token$"), "mask token"),
    (re.compile(r"^decoder[._]"), "decoder"),
    (re.compile(r"^projector\."), "projector"),
    (re.compile(r"^seg_embed\."), "segment embedding"),
]
_MAE_DROP = [
    (re.compile(r"^decoder[._]"), "decoder"),
    (re.compile(r"^mask_token$"), "mask token"),
]
# mmpretrain VisionTransformer (mmpretrain/models/backbones/vision_transformer.py) -> ours
_MMPRETRAIN_RENAME = [
    (re.compile(r"^patch_embed\.projection\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^layers\.(\d+)\.ln([12])\.(weight|bias)$"), r"blocks.\1.norm\2.\3"),
    (re.compile(r"^layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$"), r"blocks.\1.attn.\2.\3"),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)$"), r"blocks.\1.mlp.fc1.\2"),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)$"), r"blocks.\1.mlp.fc2.\2"),
    (re.compile(r"^ln1\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^(cls_token|pos_embed)$"), r"\1"),
]
_MMPRETRAIN_DROP = [
    (re.compile(r"^neck\."), "MAE decoder (neck)"),
    (re.compile(r"^(head|data_preprocessor)\."), "head / data preprocessor"),
]
# DINO / iBOT MultiCropWrapper(backbone=ViT, head=DINOHead / iBOTHead): the ViT keys are ours
_DINO_DROP = [
    (re.compile(r"^head\."), "DINO / iBOT projection head"),
    (re.compile(r"^backbone\.masked_embed$"), "mask token (iBOT)"),
]
_MM_DROP = [
    (re.compile(r"^(decode_head|auxiliary_head|neck|rpn_head|roi_head|bbox_head|mask_head"
                r"|data_preprocessor)\."), "task heads / neck"),
]


# ---- reading ---------------------------------------------------------------------------------
def resolve_checkpoint_path(path: str | Path) -> Path:
    """A pretraining run directory stands for its weights: ``model.safetensors`` unless
    ``checkpoint.pth`` was written at a later step (a run stopped between the two renames of
    a checkpoint write) or is the only one; any other path is returned as is."""
    path = Path(path)
    if not path.is_dir():
        return path
    have = [path / n for n in (WEIGHTS_NAME, CHECKPOINT_NAME) if (path / n).is_file()]
    if len(have) == 2:
        steps = [stored_step(p) for p in have]
        if None not in steps and steps[1] > steps[0]:
            return have[1]
    return have[0] if have else path


def _is_safetensors_file(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".safetensors" or is_safetensors(path))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint (.safetensors or a torch file, weights_only) → (state dict, metadata).
    A directory means its ``model.safetensors`` (else ``checkpoint.pth``)."""
    path = resolve_checkpoint_path(path)
    if Path(path).is_dir():
        raise CheckpointError(f"no {WEIGHTS_NAME} or {CHECKPOINT_NAME} in directory {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta: dict = {}
    if _is_safetensors_file(path):
        sd, meta = read_safetensors(path)
        for k in ("config", "dropped"):
            if k in meta:
                try:
                    meta[k] = json.loads(meta[k])
                except (TypeError, ValueError):
                    pass
    else:
        obj = load_weights_only(path)
        sd = obj
        if isinstance(obj, Mapping):
            # "teacher": DINO / iBOT training checkpoints ({"student", "teacher", ...}); their
            # evaluation reads the teacher (--checkpoint_key teacher)
            for key in ("model", "state_dict", "module", "teacher"):
                if key in obj and isinstance(obj[key], Mapping):
                    sd = obj[key]
                    if isinstance(obj.get("meta"), Mapping):
                        meta = dict(obj["meta"])
                    if "config" in obj:
                        meta["config"] = obj["config"]
                    break
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{path}: no state dict found (type {type(obj).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: non-tensor entries in the state dict: {format_names(bad)}")
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, meta


def read_key_names(path: str | Path) -> dict[str, None]:
    """The state-dict keys of a checkpoint (values None), for checking its layout before the
    real load: a safetensors file is read from its header only, a torch file whole."""
    path = resolve_checkpoint_path(path)
    if _is_safetensors_file(path):
        return dict.fromkeys(safetensors_keys(path))
    return dict.fromkeys(read_weights(path)[0])


def checkpoint_config(path: str | Path) -> dict:
    """The pretraining ``config`` stored with a checkpoint ({} if none): safetensors metadata
    is read from the header only; a torch file is read whole."""
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        return {}
    if _is_safetensors_file(path):
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


# ---- classification of keys -----------------------------------------------------------------
def extract_vit(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict, list[tuple[str, str]]]:
    """Split a state dict into (source kind, flat ViT[+adapter] tensors, dropped (key, reason)).
    Raises CheckpointError naming every key it does not know."""
    keys = list(sd)
    if any(k.startswith("backbone.layers.") for k in keys):
        return _extract_mmpretrain(sd)
    if any(k.startswith("encoder.") for k in keys):
        source, drops, strip = "pretrain", _PRETRAIN_DROP, "encoder."
    elif any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys):
        source, drops, strip = "dino", _DINO_DROP, "backbone."
    elif any(k.startswith("backbone.") for k in keys):
        source, drops, strip = "mm", _MM_DROP, "backbone."
    else:
        source, drops, strip = "vit", _MAE_DROP, ""
    kept: dict[str, torch.Tensor] = OrderedDict()
    dropped: list[tuple[str, str]] = []
    unknown: list[str] = []
    for k in keys:
        reason = next((r for rx, r in drops if rx.search(k)), None)
        if reason is not None:
            dropped.append((k, reason))
            continue
        if strip and not k.startswith(strip):
            unknown.append(k)
            continue
        bare = k[len(strip):]
        if VIT_KEY.match(bare) or (source in ("mm", "vit") and ADAPTER_KEY.match(bare)):
            kept[bare] = sd[k]
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"unknown keys in a {source!r} checkpoint: {format_names(unknown)}")
    if "patch_embed.proj.weight" not in kept or not any(k.startswith("blocks.") for k in kept):
        raise CheckpointError(f"no ViT weights (patch_embed.proj.weight, blocks.*) found in a "
                              f"{source!r} checkpoint; keys start with {format_names(keys, 4)}")
    return source, kept, dropped


def _extract_mmpretrain(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict, list]:
    """``extract_vit`` for an mmpretrain checkpoint (see module docstring)."""
    kept: dict[str, torch.Tensor] = OrderedDict()
    dropped, unknown = [], []
    for k, v in sd.items():
        reason = next((r for rx, r in _MMPRETRAIN_DROP if rx.search(k)), None)
        if reason is not None:
            dropped.append((k, reason))
            continue
        bare = k[len("backbone."):] if k.startswith("backbone.") else None
        new = next((rx.sub(to, bare) for rx, to in _MMPRETRAIN_RENAME
                    if bare is not None and rx.match(bare)), None)
        if new is None:
            unknown.append(k)
        else:
            kept[new] = v
    if unknown:
        raise CheckpointError(f"keys of an 'mmpretrain' checkpoint that our ViT cannot "
                              f"represent: {format_names(unknown)}")
    if "patch_embed.proj.weight" not in kept:
        raise CheckpointError("no patch embedding (backbone.patch_embed.projection.weight) in "
                              "an 'mmpretrain' checkpoint")
    return "mmpretrain", kept, dropped


def to_target(kept: Mapping[str, torch.Tensor], target: str) -> tuple[dict, list]:
    """Select the tensors of a target layout from ``extract_vit``'s output; returns
    (state dict, extra dropped (key, reason))."""
    if target not in TARGETS:
        raise CheckpointError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    out: dict[str, torch.Tensor] = OrderedDict()
    dropped: list[tuple[str, str]] = []
    for k, v in kept.items():
        if ADAPTER_KEY.match(k) and target != "mm":
            dropped.append((k, "dense adapter (fpn1-4)"))
        elif HEAD_KEY.match(k) and target == "mm":
            dropped.append((k, "final norm / classification head (unused by the dense backbone)"))
        elif target == "timm" and k.startswith("head."):
            dropped.append((k, "classification head"))
        elif target == "classifier" and k.startswith("norm."):
            dropped.append((k, "final norm (the avg-pool classifier uses fc_norm)"))
        elif target == "timm" and REL_POS_KEY.match(k):
            raise CheckpointError(f"{k}: timm's VisionTransformer has no relative position bias;"
                                  f" convert with --to vit or --to mm instead")
        else:
            out[k] = v if v is None else v.contiguous()  # None: key names only
    return out, dropped


def summarize(dropped: list[tuple[str, str]]) -> str:
    if not dropped:
        return "dropped: nothing"
    groups: dict[str, list[str]] = {}
    for k, r in dropped:
        groups.setdefault(r, []).append(k)
    return "dropped: " + "; ".join(f"{r} ({len(ks)} keys: {format_names(ks, 3)})"
                                   for r, ks in groups.items())


# ---- tensors ---------------------------------------------------------------------------------
def square_grid(num_patches: int, what: str = "pos_embed") -> tuple[int, int]:
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise CheckpointError(f"{what}: {num_patches} patch tokens is not a square grid")
    return side, side


def match_state_dict(model_sd: Mapping[str, torch.Tensor], ckpt: Mapping[str, torch.Tensor],
                     optional_missing: Callable[[str], bool] = lambda k: False,
                     ignored: Mapping[str, str] | None = None,
                     resize: Mapping[str, Callable] | None = None,
                     what: str = "checkpoint") -> tuple[dict, list[str], list[str]]:
    """Check a checkpoint against a model state dict before loading.

    Returns (tensors to load, missing keys, ignored keys). ``optional_missing(key)`` says which
    model keys may be absent (e.g. adapter, relative position tables); ``ignored`` maps
    checkpoint keys knowingly not loaded to their reason; ``resize[key](tensor, target_shape)``
    adapts a tensor whose shape differs. Anything else — a missing key, an unexpected key, a
    shape that cannot be adapted — raises one CheckpointError naming the keys."""
    ignored = dict(ignored or {})
    resize = dict(resize or {})
    missing = [k for k in model_sd if k not in ckpt]
    unexpected = [k for k in ckpt if k not in model_sd and k not in ignored]
    bad_missing = [k for k in missing if not optional_missing(k)]
    problems = []
    if bad_missing:
        problems.append(f"missing keys: {format_names(bad_missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {format_names(unexpected)}")
    out = {}
    mismatched, wrong_dtype = [], []
    for k, v in ckpt.items():
        if k not in model_sd:
            continue
        target = model_sd[k]
        if v.shape != target.shape:
            fn = resize.get(k)
            if fn is None:
                mismatched.append(f"{k} {tuple(v.shape)} vs model {tuple(target.shape)}")
                continue
            v = fn(v, target.shape)
        if v.dtype != target.dtype and not (v.is_floating_point() and target.is_floating_point()):
            wrong_dtype.append(f"{k} {v.dtype} vs model {target.dtype}")
            continue
        out[k] = v.to(target.dtype)  # floating point: e.g. fp16 / bf16 -> fp32 (exact)
    if mismatched:
        problems.append(f"shape mismatch: {format_names(mismatched)}")
    if wrong_dtype:
        problems.append(f"dtype mismatch: {format_names(wrong_dtype)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    return out, missing, sorted(k for k in ckpt if k in ignored)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "checkpoint",
              **match_kw) -> dict:
    """Check ``state`` against ``model`` (:func:`match_state_dict`, whose keyword arguments
    say what may be missing, ignored or resized), then load it. Returns the load report
    ``{"loaded", "missing", "ignored"}`` (sorted key lists)."""
    load, missing, ignored = match_state_dict(model.state_dict(), state, what=what, **match_kw)
    model.load_state_dict(load, strict=False)
    return {"loaded": sorted(load), "missing": sorted(missing), "ignored": ignored}


def load_report_line(path, source: str, report: dict, dropped: list[tuple[str, str]],
                     grids: tuple | None = None) -> str:
    """One line saying what a load took, dropped and left fresh (every consumer prints it);
    ``grids = (checkpoint grid, model grid)`` when ``pos_embed`` was resampled."""
    fresh = report["missing"]
    resampled = (f", pos_embed {grids[0][0]}x{grids[0][1]} -> {grids[1][0]}x{grids[1][1]}"
                 if grids and tuple(grids[0]) != tuple(grids[1]) else "")
    return (f"loaded {len(report['loaded'])} tensors from {path} ({source} layout{resampled}); "
            f"{summarize(dropped)}; " + (f"newly initialised: {format_names(fresh, 4)} "
                                         f"[{len(fresh)} keys]" if fresh else "nothing fresh"))
