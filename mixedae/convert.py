"""``mixedae convert``: write a checkpoint in another layout — pure torch/safetensors, no
OpenMMLab import. Reading, layout detection and key checks are the one weight loader's
(:mod:`mixedae.runtime.weights`); this module only selects and writes.

Targets (``--to``):

* ``mm``         flat ViT keys for ``MixedAEViT`` (``pretrained=`` / ``init_cfg``): no final
  norm / head (the dense backbone does not use them); ``.safetensors`` plus a ``.pth``
  (``{"state_dict": ..., "meta": ...}``) for tools that only read torch files;
* ``timm``       timm ``VisionTransformer`` layout (``vit_base_patch16_224`` etc.), no head:
  ``timm.create_model(name, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file=OUT))``;
* ``vit``        ours: loads strictly into ``mixedae.model.vit.create_vit(size)`` (encoder incl.
  norm);
* ``classifier`` ours for fine-tuning ``create_vit(size, global_pool='avg', num_classes=N)``:
  the final ``norm`` is dropped (replaced by ``fc_norm``); ``load_state_dict(strict=False)``
  then misses exactly ``fc_norm.*`` and ``head.*``.

Every source the loader reads is accepted (pretraining runs and checkpoints, official MAE,
timm, files written by this command, mmseg / mmdet checkpoints of ``tools/train.py`` incl.
mmengine Runner state). Before anything is written the tensors are checked against the ViT
they describe (:func:`check_architecture`: every block present, shapes, floating-point
dtypes) and for NaN / Inf (refused unless ``--allow-nonfinite``); a problem is refused with
the list of keys. Output files are written atomically; OUT must name a file, not a
directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from mixedae.model.vit import VIT_SIZES, VisionTransformer
from mixedae.runtime.atomic import (atomic_write_many, remove_stale_temps, safetensors_writer,
                                    torch_save)
from mixedae.runtime.cli import add_debug_flag, check_writable_dir, run_main
from mixedae.runtime.errors import CheckpointError, ConfigError, format_names
from mixedae.runtime.weights import (REL_POS_KEY, TARGETS, extract_vit, read_weights,
                                     square_grid, summarize, to_target)


# ---- checking against the architecture ------------------------------------------------------
def _reference(kept: dict) -> tuple[str, dict]:
    """(size name, state dict of a ViT of the checkpoint's size / patch / grid / relative
    position bias): one real block is built and its keys repeated for every block."""
    pe = kept["patch_embed.proj.weight"]
    depth = 1 + max(int(k.split(".")[1]) for k in kept if k.startswith("blocks."))
    dim = pe.shape[0]
    size = next((n for n, (d, n_blocks, _) in VIT_SIZES.items() if (d, n_blocks) == (dim, depth)),
                None)
    if size is None or pe.ndim != 4:
        known = ", ".join(f"{n} (dim {d}, {b} blocks)" for n, (d, b, _) in VIT_SIZES.items())
        raise CheckpointError(f"patch embedding {tuple(pe.shape)} with {depth} blocks is no known "
                              f"ViT size; known: {known}")
    pos = kept.get("pos_embed")
    side = square_grid(pos.shape[1] - 1)[0] if pos is not None and pos.ndim == 3 else 14
    one = VisionTransformer(img_size=side * pe.shape[-1], patch_size=pe.shape[-1],
                            embed_dim=dim, depth=1, num_heads=VIT_SIZES[size][2],
                            rel_pos_bias=any(REL_POS_KEY.match(k) for k in kept)).state_dict()
    ref = {k: v for k, v in one.items() if not k.startswith("blocks.")}
    for i in range(depth):
        ref.update({f"blocks.{i}" + k[len("blocks.0"):]: v for k, v in one.items()
                    if k.startswith("blocks.0.")})
    ref.update({"fc_norm.weight": ref["norm.weight"], "fc_norm.bias": ref["norm.bias"]})
    return size, ref


def check_architecture(out_sd: dict, target: str, source: str) -> tuple[str, dict, list]:
    """Check every tensor against the ViT it belongs to before anything is written: complete
    (every block, embedding and the final norm — unless the target drops it or the source
    has none by design: a dense backbone, an avg-pool ViT with ``fc_norm``), shapes, dtypes (floating point; fp16 / bf16 / fp64 become fp32
    and are reported). Returns (size, tensors, notes); one CheckpointError lists all
    problems."""
    size, ref = _reference(out_sd)
    optional = {"fc_norm.weight", "fc_norm.bias"}
    if target in ("mm", "classifier") or source == "mm" or "fc_norm.weight" in out_sd:
        optional |= {"norm.weight", "norm.bias"}  # dense backbones / avg-pool ViTs have none
    missing = [k for k in ref if k not in out_sd and k not in optional]
    problems, casts, out = [], [], {}
    for k, v in out_sd.items():
        want = ref.get(k)
        if want is not None and k != "pos_embed" and v.shape != want.shape:
            problems.append(f"{k} {tuple(v.shape)} vs {tuple(want.shape)}")
        elif k == "pos_embed" and (v.ndim != 3 or v.shape[-1] != ref[k].shape[-1]):
            problems.append(f"{k} {tuple(v.shape)} vs (1, 1+grid, {ref[k].shape[-1]})")
        elif k == "head.weight" and (v.ndim != 2 or v.shape[1] != ref["norm.weight"].shape[0]):
            problems.append(f"{k} {tuple(v.shape)} vs (classes, {ref['norm.weight'].shape[0]})")
        if want is not None and not v.is_floating_point():
            problems.append(f"{k} has dtype {v.dtype} (weights are floating point)")
        elif want is not None and v.dtype != torch.float32:
            casts.append(f"{k} {v.dtype}")
            v = v.float()
        out[k] = v
    if missing or problems:
        parts = [f"{what}: {format_names(keys)}"
                 for what, keys in (("missing", missing), ("wrong", problems)) if keys]
        raise CheckpointError(f"not a complete ViT-{size} checkpoint for --to {target}: "
                              + "; ".join(parts))
    notes = [f"cast to float32: {format_names(casts, 3)} [{len(casts)} tensors]"] if casts else []
    return size, out, notes


# ---- writing ---------------------------------------------------------------------------------
def _out_paths(out: str | Path, target: str) -> tuple[Path, Path | None]:
    """The file(s) written for OUT: ``.pth``/``.pt``/no suffix become ``.safetensors`` (plus
    the ``.pth`` of ``--to mm``). A directory is refused (the name would be written beside
    it, not inside)."""
    if os.path.isdir(out) or str(out).endswith(os.sep):
        raise ConfigError(f"output {out} is a directory: give the output file's name, e.g. "
                          f"{Path(out) / f'backbone_{target}.safetensors'}")
    out = Path(out)
    if out.suffix in (".pth", ".pt"):
        out = out.with_suffix(".safetensors")
    elif out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    return out, (out.with_suffix(".pth") if target == "mm" else None)


def nonfinite_tensors(sd: dict) -> list[str]:
    """``key (n of N values)`` for every floating-point tensor holding NaN or Inf."""
    out = []
    for k, v in sd.items():
        if v.is_floating_point():
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                out.append(f"{k} ({bad} of {v.numel()} values)")
    return out


def convert(src: str | Path, out: str | Path, to: str = "mm", log=print,
            allow_nonfinite: bool = False) -> dict:
    """Convert ``src`` to ``to``: read, check against the architecture and for NaN / Inf
    (refused unless ``allow_nonfinite``), then write the file(s) atomically (all or nothing);
    returns a report dict."""
    st_path, pth_path = _out_paths(out, to)
    sd, meta = read_weights(src)
    source, kept, dropped = extract_vit(sd)
    out_sd, more = to_target(kept, to)
    dropped += more
    size, out_sd, notes = check_architecture(out_sd, to, source)
    bad = nonfinite_tensors(out_sd)
    if bad and not allow_nonfinite:
        raise CheckpointError(f"{src}: non-finite weights (NaN/Inf, a diverged run?) in "
                              f"{format_names(bad, 4)} [{len(bad)} tensors]; nothing written "
                              f"(--allow-nonfinite converts them anyway)")
    if bad:
        notes.append(f"non-finite values kept (--allow-nonfinite): {format_names(bad, 3)} "
                     f"[{len(bad)} tensors]")
    info = {"format": f"mixedae-{to}", "source": source, "source_path": str(src),
            "dropped": json.dumps(sorted({r for _, r in dropped}))}
    if "config" in meta:
        info["config"] = meta["config"] if isinstance(meta["config"], str) \
            else json.dumps(meta["config"])
    writes = [(st_path, safetensors_writer(dict(out_sd), info))]
    remove_stale_temps(st_path.parent, {st_path.name} | ({pth_path.name} if pth_path else set()))
    if pth_path is not None:
        obj = {"state_dict": dict(out_sd), "meta": info}
        writes.append((pth_path, lambda tmp: torch_save(obj, tmp)))
    atomic_write_many(writes)
    written = [str(p) for p, _ in writes]
    report = {"source": source, "target": to, "size": size, "kept": len(out_sd),
              "dropped": dropped, "notes": notes, "written": written}
    log(f"[convert] {src} ({source}, ViT-{size}) -> {to}: kept {len(out_sd)} tensors; "
        f"{summarize(dropped)}" + "".join(f"; {n}" for n in notes))
    log(f"[convert] wrote {', '.join(written)}")
    return report


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="mixedae convert",
        description="Convert a checkpoint: pretraining / official MAE / timm / mm-trained "
                    "(tools/train.py) → mm backbone, timm, our encoder or our classifier.")
    ap.add_argument("src", help="checkpoint file (.safetensors/.pth) or pretraining run dir")
    ap.add_argument("out", help="output path (.safetensors; --to mm also writes .pth)")
    ap.add_argument("--to", default="mm", choices=TARGETS, help="target layout (default mm)")
    ap.add_argument("--allow-nonfinite", action="store_true",
                    help="convert weights holding NaN / Inf (refused by default), with a note")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    check_writable_dir(_out_paths(args.out, args.to)[0].parent, "output folder")
    convert(args.src, args.out, args.to, allow_nonfinite=args.allow_nonfinite)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae convert", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
