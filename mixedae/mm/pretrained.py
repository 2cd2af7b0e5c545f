"""Does ``--pretrained`` fit the config? The checkpoint's ViT (size name from the ``config``
json that pretraining runs store in ``model.safetensors`` metadata, else from the weights'
shapes; patch size, width and depth always from the weights) against ``model.backbone``.

A mismatch yields the exact ``--cfg-options`` that make the config build that ViT: backbone
``arch`` / ``patch_size`` / ``out_indices`` and every input width that follows the ViT width
(UperNet and FCN heads, FPN or SimpleFPN neck, SimpleFPN ``in_stride``). ``tools/train.py``
prints them and stops, or applies them with ``--match-pretrained``.

Two more checks of the weights against a config, before any work:

* ``require_weights``: ``tools/train.py`` (and the launchers, which call it) refuses to train
  from random initialisation unless ``--from-scratch`` says so;
* ``match_checkpoint``: ``tools/test.py`` / ``tools/infer.py`` build the model a trained
  checkpoint holds (the same options as ``--match-pretrained`` plus the position-embedding
  grid and the relative position tables), so the config a run was started from tests what that
  run trained, whatever ``--match-pretrained`` or ``--cfg-options`` changed at training time.
"""

from __future__ import annotations

import os.path as osp
import re
import shlex
from dataclasses import dataclass

from mmengine.config import Config

from mixedae.mm.backbone import default_out_indices
from mixedae.model.vit import VIT_SIZES
from mixedae.runtime.errors import CheckpointError, ConfigError
from mixedae.runtime.weights import REL_POS_KEY, extract_vit, read_weights

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


def checkpoint_vit(path: str, weights: tuple[dict, dict] | None = None) -> VitShape:
    """The ViT stored in ``path`` (any layout :mod:`mixedae.runtime.weights` reads);
    ``weights`` = its (state dict, metadata) if already read."""
    sd, meta = weights if weights is not None else read_weights(path)
    _, kept, _ = extract_vit(sd)
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
    bb = cfg.model.get("backbone") or {}
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


# ---- weights a training run starts from ------------------------------------------------------
def config_checkpoints(cfg: Config) -> list[str]:
    """Where the config itself names weights: ``load_from``, ``resume``, ``model.pretrained``,
    ``model.backbone.pretrained`` / ``init_cfg`` of type Pretrained (as 'key=value')."""
    found = []
    if cfg.get("load_from"):
        found.append(f"load_from={cfg.load_from}")
    if cfg.get("resume"):
        found.append("resume=True")
    model = cfg.get("model") or {}
    bb = model.get("backbone") or {}
    for where, value in (("model.pretrained", model.get("pretrained")),
                         ("model.backbone.pretrained", bb.get("pretrained"))):
        if value:
            found.append(f"{where}={value}")
    init = bb.get("init_cfg")
    for c in (init if isinstance(init, (list, tuple)) else [init]):
        if isinstance(c, dict) and c.get("type") == "Pretrained" and c.get("checkpoint"):
            found.append(f"model.backbone.init_cfg.checkpoint={c['checkpoint']}")
    return found


def require_weights(cfg: Config, pretrained: str | None, from_scratch: bool,
                    resume: str | None = None, work_dir: str | None = None) -> None:
    """A transfer run starts from pretrained weights: refuse (ConfigError, one line) a run with
    neither ``--pretrained`` nor a checkpoint in the config (nor one to resume: ``--resume
    PATH``, or ``--resume`` with a ``last_checkpoint`` in ``work_dir``) unless
    ``--from-scratch``; refuse ``--from-scratch`` when the config names weights anyway."""
    named = config_checkpoints(cfg)
    if from_scratch and named:
        raise ConfigError(f"--from-scratch contradicts the config's {named[0]}; drop one of them")
    resumable = resume not in (None, "auto") or (
        resume == "auto" and work_dir is not None and osp.isfile(osp.join(work_dir,
                                                                          "last_checkpoint")))
    if not (from_scratch or pretrained or named or resumable):
        where = (f" (--resume found no last_checkpoint in {work_dir})" if resume == "auto"
                 else "")
        raise ConfigError(f"no pretrained weights{where}: give --pretrained PATH (a pretraining "
                          f"run dir or converted backbone), or --from-scratch to train from "
                          f"random initialisation on purpose")


def start_weights(cfg: Config) -> str | None:
    """The checkpoint a training run's weights come from: ``load_from`` (the whole model,
    loaded over the backbone's own initialisation), else the backbone's ``init_cfg``
    Pretrained checkpoint (where ``--pretrained`` goes), ``model.backbone.pretrained`` or
    ``model.pretrained``; None: random initialisation."""
    if cfg.get("load_from"):
        return str(cfg.load_from)
    model = cfg.get("model") or {}
    bb = model.get("backbone") or {}
    init = bb.get("init_cfg")
    for c in (init if isinstance(init, (list, tuple)) else [init]):
        if isinstance(c, dict) and c.get("type") == "Pretrained" and c.get("checkpoint"):
            return str(c["checkpoint"])
    named = bb.get("pretrained") or model.get("pretrained")
    return str(named) if named else None


def resumed(cfg: Config, work_dir: str) -> bool:
    """Whether mmengine will continue a checkpoint (``resume`` with ``load_from``, or with a
    ``last_checkpoint`` in ``work_dir``) rather than start from :func:`start_weights`."""
    return bool(cfg.get("resume")) and bool(
        cfg.get("load_from") or osp.isfile(osp.join(work_dir, "last_checkpoint")))


def write_pretrained_record(work_dir: str, source: str | None) -> None:
    """``<work_dir>/pretrained.json`` (atomic; rank 0, before training): the
    :mod:`mixedae.runtime.provenance` record of ``source`` (the run's :func:`start_weights`),
    null for random initialisation, ``{"path"}`` alone for weights that are no local file (a
    URL: nothing to fingerprint). What ``mixedae report`` credits the work dir's results by."""
    import json
    from mixedae.runtime.atomic import atomic_write_text
    from mixedae.runtime.provenance import checkpoint_record
    rec = None
    if source is not None:
        try:
            rec = checkpoint_record(source)
        except OSError:
            rec = {"path": source}
    atomic_write_text(osp.join(work_dir, "pretrained.json"), json.dumps(rec, indent=1))


# ---- the model a trained checkpoint holds -----------------------------------------------------
def _grid(img_size, patch: int) -> tuple[int, int]:
    h, w = (img_size, img_size) if isinstance(img_size, (int, float)) else img_size
    return int(h) // patch, int(w) // patch


def checkpoint_options(cfg: Config, path: str) -> dict:
    """``--cfg-options`` entries making ``cfg`` build the model of the trained checkpoint
    ``path``: :func:`matching_options` (ViT size, patch, out_indices, widths), the stored
    position-embedding grid (``model.backbone.img_size``; a square grid, else it must be the
    config's) and whether it has relative position tables."""
    bb = cfg.model.get("backbone") or {}
    if bb.get("type") != "MixedAEViT" or not isinstance(bb.get("arch", "base"), str):
        return {}   # nothing to infer for other backbones: the full-checkpoint check decides
    sd, meta = read_weights(path)
    want = checkpoint_vit(path, (sd, meta))
    opts = matching_options(cfg, want)
    _, kept, _ = extract_vit(sd)
    pos = kept.get("pos_embed")
    if pos is not None:
        n = int(pos.shape[1]) - 1
        gh, gw = _grid(bb.get("img_size", 224), want.patch_size)
        if n != gh * gw:
            side = int(round(n ** 0.5))
            if side * side != n:
                raise CheckpointError(f"{path}: pos_embed holds {n} patch positions, neither the "
                                      f"config's {gh}x{gw} grid nor a square one; set "
                                      f"model.backbone.img_size to the grid it was trained at")
            opts["model.backbone.img_size"] = side * want.patch_size
    has_rel = any(REL_POS_KEY.match(k) for k in kept)
    if has_rel != bool(bb.get("use_rel_pos_bias", False)):
        opts["model.backbone.use_rel_pos_bias"] = has_rel
    return opts


def match_checkpoint(cfg: Config, path: str) -> dict:
    """Apply :func:`checkpoint_options` to ``cfg`` (tools/test.py, tools/infer.py); returns
    them, and says so in the log when there are any."""
    opts = checkpoint_options(cfg, path)
    if opts:
        cfg.merge_from_dict(opts)
        from mmengine.logging import print_log
        print_log(f"{path}: the config now builds the model this checkpoint holds: "
                  f"{format_options(opts)}", logger="current")
    return opts
