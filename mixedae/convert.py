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
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mixedae.model.pos_embed import resize_pos_embed  # noqa: F401  (re-exported)
from mixedae.runtime.errors import CheckpointError
from mixedae.runtime.weights import (  # noqa: F401  (re-exported for the mm glue and tools)
    ADAPTER_KEY, HEAD_KEY, REL_POS_KEY, TARGETS, _names, extract_vit, match_state_dict,
    read_weights, square_grid, summarize, to_target)

ConversionError = CheckpointError  # the project's one checkpoint error, under its old name here
load_checkpoint_file = read_weights

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
