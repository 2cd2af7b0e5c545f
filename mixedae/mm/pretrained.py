"""Does ``--pretrained`` fit the config? The checkpoint's ViT (size name from the ``config``
json that pretraining runs store in ``model.safetensors`` metadata, else from the weights'
shapes; patch size, width and depth always from the weights) against ``model.backbone``.

A mismatch yields the exact ``--cfg-options`` that make the config build that ViT: backbone
``arch`` / ``patch_size`` / ``out_indices`` and every input width that follows the ViT width
(UperNet and FCN heads, FPN or SimpleFPN neck, SimpleFPN ``in_stride``). ``tools/train.py``
prints them and stops, or applies them with ``--match-pretrained``.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from mmengine.config import Config

from mixedae import convert as cv
from mixedae.mm.backbone import default_out_indices
from mixedae.model.vit import VIT_SIZES
from mixedae.runtime.errors import CheckpointError, ConfigError

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class VitShape:
    arch: str          # VIT_SIZES name
    patch_size: int
    embed_dim: int
    depth: int
    source: str        # where the name came from: "metadata" or "weights"

    def __str__(self) -> str:
        src = "" if self.source == "config" else f"; size name from its {self.source}"
        return (f"ViT-{self.arch}/{self.patch_size} ({self.embed_dim} wide, {self.depth} "
                f"blocks{src})")


def _arch_of(dim: int, depth: int) -> str | None:
    return next((n for n, (d, L, _) in VIT_SIZES.items() if (d, L) == (dim, depth)), None)


def checkpoint_vit(path: str) -> VitShape:
    """The ViT stored in ``path`` (any layout :mod:`mixedae.convert` reads)."""
    sd, meta = cv.load_checkpoint_file(path)
    _, kept, _ = cv.extract_vit(sd)
    w = kept.get("patch_embed.proj.weight")
    if w is None:
        raise CheckpointError(f"{path}: no patch_embed.proj.weight; cannot tell the ViT size")
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max((int(m.group(1)) for k in kept if (m := _BLOCK.match(k))), default=-1)
    conf = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    stated = conf.get("model")
    if stated is not None:
        if stated not in VIT_SIZES or VIT_SIZES[stated][:2] != (dim, depth):
            raise CheckpointError(f"{path}: metadata says model={stated!r} but the weights are "
                                  f"{dim} wide with {depth} blocks")
        if conf.get("patch_size") not in (None, patch):
            raise CheckpointError(f"{path}: metadata says patch_size={conf['patch_size']} but "
                                  f"patch_embed.proj.weight has {patch}x{patch} kernels")
        return VitShape(stated, patch, dim, depth, "metadata")
    arch = _arch_of(dim, depth)
    if arch is None:
        raise CheckpointError(f"{path}: a ViT {dim} wide with {depth} blocks matches no size in "
                              f"{sorted(VIT_SIZES)}")
    return VitShape(arch, patch, dim, depth, "weights")


def config_vit(cfg: Config) -> VitShape:
    bb = cfg.model.backbone
    if bb.get("type") != "MixedAEViT":
        raise ConfigError(f"--pretrained needs model.backbone.type='MixedAEViT', got "
                          f"{bb.get('type')!r}")
    arch = bb.get("arch", "base")
    if not isinstance(arch, str) or arch not in VIT_SIZES:
        raise ConfigError(f"model.backbone.arch={arch!r}: use a size name {sorted(VIT_SIZES)}")
    dim, depth, _ = VIT_SIZES[arch]
    return VitShape(arch, int(bb.get("patch_size", 16)), dim, depth, "config")


def matching_options(cfg: Config, want: VitShape) -> dict:
    """``--cfg-options`` entries (dotted key → value) making ``cfg`` build ``want``."""
    have, m, opts = config_vit(cfg), cfg.model, {}
    if (have.embed_dim, have.depth) != (want.embed_dim, want.depth):
        opts["model.backbone.arch"] = want.arch
    if have.patch_size != want.patch_size:
        opts["model.backbone.patch_size"] = want.patch_size
        if (m.get("neck") or {}).get("type") == "SimpleFPN":
            opts["model.neck.in_stride"] = want.patch_size
    if have.depth != want.depth:
        old = tuple(m.backbone.get("out_indices") or default_out_indices(have.depth))
        opts["model.backbone.out_indices"] = ((want.depth - 1,) if len(old) == 1
                                              else default_out_indices(want.depth))
    if have.embed_dim != want.embed_dim:
        for key in ("decode_head", "auxiliary_head", "neck"):
            part = m.get(key)
            if isinstance(part, dict) and "in_channels" in part:
                ic = part["in_channels"]
                opts[f"model.{key}.in_channels"] = ([want.embed_dim] * len(ic)
                                                    if isinstance(ic, (list, tuple))
                                                    else want.embed_dim)
    return opts


def format_options(opts: dict) -> str:
    def val(v):
        if isinstance(v, tuple):
            return "(" + ",".join(map(str, v)) + ("," if len(v) == 1 else "") + ")"
        if isinstance(v, list):
            return "[" + ",".join(map(str, v)) + "]"
        return str(v)
    return "--cfg-options " + " ".join(shlex.quote(f"{k}={val(v)}") for k, v in opts.items())


def match_pretrained(cfg: Config, path: str, apply: bool = False) -> dict:
    """Compare ``path`` with ``cfg``; return the applied options ({} if it already fits).
    Without ``apply`` a mismatch raises ConfigError carrying the exact ``--cfg-options``."""
    want = checkpoint_vit(path)
    opts = matching_options(cfg, want)
    if opts and not apply:
        raise ConfigError(f"--pretrained {path} holds a {want} but the config builds a "
                          f"{config_vit(cfg)}; rerun with "
                          f"{format_options(opts)} (or add --match-pretrained to apply them)")
    if opts:
        cfg.merge_from_dict(opts)
    return opts
