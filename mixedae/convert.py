"""Checkpoint conversion between the pretraining model, the dense (mm) backbone, timm and the
project's classifier — pure torch/safetensors, no OpenMMLab import.

Sources (detected from the keys, after unwrapping ``{"model"|"state_dict"|"module": ...}`` and
a DDP ``module.`` prefix):

* ``pretrain``  our pretraining model: ``encoder.<vit keys>``, ``decoder.*``, ``projector.*``
  (``<dir>/model.safetensors`` or ``<dir>/checkpoint.pth``; a directory is accepted);
* ``mm``        an mmseg/mmdet checkpoint: ``backbone.<vit keys | adapter keys>`` + task heads;
* ``vit``       flat ViT keys: official MAE (``decoder_*``/``mask_token`` dropped), timm, MAE
  fine-tuned (``fc_norm``/``head``), or a file written by this module.

Targets (``--to``):

* ``mm``         flat ViT keys for ``MixedAEViT`` (``pretrained=`` / ``init_cfg``): no final
  norm / head (the dense backbone does not use them); ``.safetensors`` plus a ``.pth``
  (``{"state_dict": ..., "meta": ...}``) for tools that only read torch files;
* ``timm``       timm ``VisionTransformer`` layout (``vit_base_patch16_224`` etc.), no head:
  ``timm.create_model(name, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file=OUT))``;
* ``vit``        ours: loads strictly into ``mixedae.model.vit.create_vit(size)`` (encoder incl. norm);
* ``classifier`` ours for fine-tuning ``create_vit(size, global_pool='avg', num_classes=N)``:
  the final ``norm`` is dropped (replaced by ``fc_norm``); ``load_state_dict(strict=False)``
  then misses exactly ``fc_norm.*`` and ``head.*``.

Everything dropped is reported by group (decoder, projector, mask token, ...); any key that
is not known is an error naming it — nothing is silently ignored. Torch files are read with
``weights_only=True``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from mixedae.runtime.errors import CheckpointError
from mixedae.model.pos_embed import resize_pos_embed  # noqa: F401  (re-exported)

__all__ = ["ConversionError", "load_checkpoint_file", "extract_vit", "to_target", "convert",
           "resize_pos_embed", "match_state_dict", "main", "TARGETS"]

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
_MM_DROP = [
    (re.compile(r"^(decode_head|auxiliary_head|neck|rpn_head|roi_head|bbox_head|mask_head"
                r"|data_preprocessor)\."), "task heads / neck"),
]


# the project's one checkpoint error (kept under this name for callers of the converter)
ConversionError = CheckpointError


def _names(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---- reading ---------------------------------------------------------------------------------
def load_checkpoint_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint (.safetensors or a torch file, weights_only) → (state dict, metadata).
    A directory means its ``model.safetensors`` (else ``checkpoint.pth``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "checkpoint.pth"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise ConversionError(f"no model.safetensors or checkpoint.pth in directory {path}")
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    meta: dict = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        sd = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                sd[k] = f.get_tensor(k)
        for k in ("config", "dropped"):
            if k in meta:
                try:
                    meta[k] = json.loads(meta[k])
                except (TypeError, ValueError):
                    pass
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle with code / unknown globals: never run it
            raise ConversionError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); export a safetensors file or a "
                f"plain tensor state dict") from None
        sd = obj
        if isinstance(obj, Mapping):
            for key in ("model", "state_dict", "module"):
                if key in obj and isinstance(obj[key], Mapping):
                    sd = obj[key]
                    if isinstance(obj.get("meta"), Mapping):
                        meta = dict(obj["meta"])
                    if "config" in obj:
                        meta["config"] = obj["config"]
                    break
        if not isinstance(sd, Mapping):
            raise ConversionError(f"{path}: no state dict found (type {type(obj).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: non-tensor entries in the state dict: {_names(bad)}")
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, meta


# ---- classification of keys -----------------------------------------------------------------
def extract_vit(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict, list[tuple[str, str]]]:
    """Split a state dict into (source kind, flat ViT[+adapter] tensors, dropped (key, reason)).
    Raises ConversionError naming every key it does not know."""
    keys = list(sd)
    if any(k.startswith("encoder.") for k in keys):
        source, drops, strip = "pretrain", _PRETRAIN_DROP, "encoder."
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
        raise ConversionError(f"unknown keys in a {source!r} checkpoint: {_names(unknown)}")
    if "patch_embed.proj.weight" not in kept or not any(k.startswith("blocks.") for k in kept):
        raise ConversionError(f"no ViT weights (patch_embed.proj.weight, blocks.*) found in a "
                              f"{source!r} checkpoint; keys start with {_names(keys, 4)}")
    return source, kept, dropped


def to_target(kept: Mapping[str, torch.Tensor], target: str) -> tuple[dict, list]:
    """Select the tensors of a target layout from ``extract_vit``'s output; returns
    (state dict, extra dropped (key, reason))."""
    if target not in TARGETS:
        raise ConversionError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
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
            raise ConversionError(f"{k}: timm's VisionTransformer has no relative position bias;"
                                  f" convert with --to vit or --to mm instead")
        else:
            out[k] = v.contiguous()
    return out, dropped


def summarize(dropped: list[tuple[str, str]]) -> str:
    if not dropped:
        return "dropped: nothing"
    groups: dict[str, list[str]] = {}
    for k, r in dropped:
        groups.setdefault(r, []).append(k)
    return "dropped: " + "; ".join(f"{r} ({len(ks)} keys: {_names(ks, 3)})"
                                   for r, ks in groups.items())


# ---- tensors ---------------------------------------------------------------------------------
def square_grid(num_patches: int, what: str = "pos_embed") -> tuple[int, int]:
    side = int(round(num_patches ** 0.5))
    if side * side != num_patches:
        raise ConversionError(f"{what}: {num_patches} patch tokens is not a square grid")
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
    shape that cannot be adapted — raises one ConversionError naming the keys."""
    ignored = dict(ignored or {})
    resize = dict(resize or {})
    missing = [k for k in model_sd if k not in ckpt]
    unexpected = [k for k in ckpt if k not in model_sd and k not in ignored]
    bad_missing = [k for k in missing if not optional_missing(k)]
    problems = []
    if bad_missing:
        problems.append(f"missing keys: {_names(bad_missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    out = {}
    mismatched = []
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
        out[k] = v.to(target.dtype)
    if mismatched:
        problems.append(f"shape mismatch: {_names(mismatched)}")
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))
    return out, missing, sorted(k for k in ckpt if k in ignored)


# ---- writing ---------------------------------------------------------------------------------
def _out_paths(out: str | Path, target: str) -> tuple[Path, Path | None]:
    out = Path(out)
    if out.suffix in (".pth", ".pt"):
        out = out.with_suffix(".safetensors")
    elif out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    return out, (out.with_suffix(".pth") if target == "mm" else None)


def convert(src: str | Path, out: str | Path, to: str = "mm", log=print) -> dict:
    """Convert ``src`` to ``to``; writes the file(s) and returns a report dict."""
    sd, meta = load_checkpoint_file(src)
    source, kept, dropped = extract_vit(sd)
    out_sd, more = to_target(kept, to)
    dropped += more
    st_path, pth_path = _out_paths(out, to)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    info = {"format": f"mixedae-{to}", "source": source, "source_path": str(src),
            "dropped": json.dumps(sorted({r for _, r in dropped}))}
    if "config" in meta:
        info["config"] = meta["config"] if isinstance(meta["config"], str) \
            else json.dumps(meta["config"])
    save_file(dict(out_sd), str(st_path), metadata=info)
    written = [str(st_path)]
    if pth_path is not None:
        torch.save({"state_dict": dict(out_sd), "meta": info}, str(pth_path))
        written.append(str(pth_path))
    report = {"source": source, "target": to, "kept": len(out_sd), "dropped": dropped,
              "written": written}
    log(f"[convert] {src} ({source}) -> {to}: kept {len(out_sd)} tensors; {summarize(dropped)}")
    log(f"[convert] wrote {', '.join(written)}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mixedae convert",
        description="Convert a checkpoint: pretraining / official MAE / timm / mm-trained → "
                    "mm backbone, timm, our encoder or our classifier.")
    ap.add_argument("src", help="checkpoint file (.safetensors/.pth) or pretraining run dir")
    ap.add_argument("out", help="output path (.safetensors; --to mm also writes .pth)")
    ap.add_argument("--to", default="mm", choices=TARGETS, help="target layout (default mm)")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.out, args.to)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
