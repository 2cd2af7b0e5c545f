"""``MixedAEViT``: the project's ViT as an mmseg / mmdet backbone.

A subclass of :class:`mixedae.model.vit.VisionTransformer`, so parameter names stay the plain ViT
names (``backbone.blocks.3.attn.qkv.weight`` ...) and the layer-decay rule, the converters and
timm/MAE checkpoints all agree on them.

* outputs: patch tokens after the blocks in ``out_indices`` reshaped to (B, D, h, w) (stride =
  patch size), then the BEiT / iBOT 4-scale adapter (``with_adapter=True``) resampling them to
  ``out_strides`` (default 4/8/16/32, what the heads' ``featmap_strides`` say) whatever the
  patch size: ×4 = ConvTranspose2d(2, 2) → norm (BN/SyncBN from ``norm_cfg``) → GELU →
  ConvTranspose2d(2, 2); ×2 = ConvTranspose2d(2, 2); ×1 = identity; ×1/2, ×1/4 = MaxPool2d.
  Patch 16 gives exactly BEiT's fpn1..fpn4; a stride the patch size cannot reach (patch 14,
  or 32 for stride 4) is refused at construction;
* depth for layer decay: ``num_layers`` and mmpretrain's ``get_layer_depth(name, prefix)``
  (the base ViT's; the adapter is "everything else"), so the optimizer constructor never needs
  the depth written in a config;
* absolute position embedding learnable at the grid of ``img_size`` (square or (h, w), e.g.
  iBOT's 672x1092 training grid for COCO): a checkpoint's embedding is resized to that grid
  once, at load (iBOT, BEiT; the base ViT's ``load_state_dict`` pre-hook), and learnt there;
  inputs of other sizes (multi-scale training, inference) get it resized bicubically (patch
  part) on the fly, as iBOT's ``interpolate_pos_encoding`` does; optional BEiT relative
  position bias (``use_rel_pos_bias``), zero init, stored and resized the same way;
* an input whose sides are not multiples of the patch size is zero-padded at the bottom and
  right to the next multiple, as mmseg's ViT does (``PatchEmbed(padding='corner')``): the
  outputs cover the padded grid and the heads resize their prediction to the image (whole-image
  inference, slide windows cut from a small image). The mmdet configs pad to 32 in the data
  preprocessor already (``pad_size_divisor``), and 512 px slide windows need none, so the
  paper's protocols never see this padding;
* activation checkpointing (``with_cp``, mmcv's name for iBOT's ``use_checkpoint``): each
  block's activations are recomputed in the backward pass (training with gradients only);
  the gradients are those of the plain forward;
* stochastic depth (``drop_path_rate``, linear over depth); no final norm (BEiT/iBOT dense
  transfer), so checkpoints' ``norm``/``fc_norm``/``head`` are dropped knowingly;
* weights: ``pretrained=PATH`` or ``init_cfg=dict(type='Pretrained', checkpoint=PATH)``
  accepting our pretraining checkpoint (file or run dir), a converted backbone file, official
  MAE / timm weights or an mm checkpoint. Every dropped, missing or unexpected key is reported;
  anything other than the expected ones (adapter and, if the checkpoint has none, relative
  position tables) is an error naming the keys — never a silent partial load.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log

from mixedae.model.vit import VIT_SIZES, Block, VisionTransformer, \
    relative_position_table_size, resize_relative_position_table
from mixedae.runtime.errors import CheckpointError, ConfigError, format_names
from mixedae.runtime.weights import (HEAD_KEY, REL_POS_KEY, extract_vit, load_into,
                                     load_report_line, read_weights, square_grid)


DEFAULT_OUT_INDICES = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23)}
DEFAULT_OUT_STRIDES = (4, 8, 16, 32)


def default_out_indices(depth: int) -> tuple[int, ...]:
    """BEiT/iBOT block indices for 12 / 24 blocks, the quarter ends for other depths."""
    return DEFAULT_OUT_INDICES.get(
        depth, (depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1))


def adapter_factors(stride_in: int, out_strides, what: str = "MixedAEViT") -> list[float]:
    """Resolution factors turning stride ``stride_in`` into each of ``out_strides``; raises
    ValueError naming both when one is not x4, x2, x1, x1/2 or x1/4."""
    strides = tuple(int(s) for s in out_strides)
    factors = [stride_in / s for s in strides]
    if len(strides) != 4 or any(f not in (4, 2, 1, 0.5, 0.25) for f in factors):
        raise ConfigError(f"{what}: input stride (patch size) {stride_in} cannot give out_strides "
                         f"{list(strides)} (4 strides, each the input stride x4, x2, x1, x1/2 or "
                         f"x1/4); use a patch-16 (or 8) checkpoint or change the heads' strides")
    return factors


def resample_branch(dim: int, factor: float, norm_cfg: dict) -> nn.Module:
    """One adapter branch changing the resolution by ``factor`` (4, 2, 1, 1/2 or 1/4)."""
    if factor == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
                             build_norm_layer(norm_cfg, dim)[1], nn.GELU(),
                             nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    if factor == 2:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    if factor == 1:
        return nn.Identity()
    if factor in (0.5, 0.25):
        k = int(round(1 / factor))
        return nn.MaxPool2d(kernel_size=k, stride=k)
    raise ConfigError(f"no adapter branch for a resolution factor of {factor}")


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, float)) else (int(x[0]), int(x[1]))


class CheckpointedBlock(Block):
    """The ViT block with optional activation checkpointing (``with_cp``; same parameters and
    names as :class:`~mixedae.model.vit.Block`). The recomputation replays the saved RNG
    state, so drop path draws the same masks and the gradients equal the plain block's."""
    with_cp = False

    def forward(self, x, attn_mask=None, homo=None, qk_embed=None):
        if self.with_cp and self.training and torch.is_grad_enabled() and x.requires_grad:
            return cp.checkpoint(super().forward, x, attn_mask, homo, qk_embed,
                                 use_reentrant=False)
        return super().forward(x, attn_mask, homo, qk_embed)


class MixedAEViT(VisionTransformer):
    """ViT backbone for dense prediction (mmseg ``MODELS`` and mmdet ``MODELS``).

    Args:
        arch: ViT size name (``micro``/``tiny``/``small``/``base``/``large``) or a dict with
            ``embed_dim``, ``depth``, ``num_heads``.
        img_size: size (int or (h, w)) whose patch grid the position embedding (and the
            relative tables) are stored and learnt at; a checkpoint's embedding is resized to
            it on load, other inputs get it resized on the fly.
        out_indices: blocks whose outputs feed the 4 scales; default (3, 5, 7, 11) for 12
            blocks (ViT-B), (7, 11, 15, 23) for 24 (ViT-L), the quarter ends otherwise.
        norm_cfg: norm of the ×4 branch, ``dict(type='SyncBN')`` or ``'BN'``.
        out_strides: strides of the 4 adapter outputs (the heads' ``featmap_strides``);
            each must be the patch size × 4, 2, 1, 1/2 or 1/4.
        with_cp: activation checkpointing of every block (memory for compute).
        pretrained / init_cfg: see module docstring.
    """

    def __init__(self, arch: str | dict = "base", img_size=224, patch_size: int = 16,
                 in_channels: int = 3, out_indices: Sequence[int] | None = None,
                 drop_path_rate: float = 0.1, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 use_rel_pos_bias: bool = False, with_adapter: bool = True,
                 norm_cfg: dict | None = None, out_strides: Sequence[int] = DEFAULT_OUT_STRIDES,
                 frozen_stages: int = -1, with_cp: bool = False,
                 pretrained: str | None = None, init_cfg: dict | list | None = None):
        if isinstance(arch, str):
            if arch not in VIT_SIZES:
                raise ConfigError(f"MixedAEViT: unknown arch {arch!r}; choose from {sorted(VIT_SIZES)}")
            dim, depth, heads = VIT_SIZES[arch]
        else:
            dim, depth, heads = arch["embed_dim"], arch["depth"], arch["num_heads"]
        img_size = _pair(img_size)
        if min(img_size) < patch_size:
            raise ConfigError(f"MixedAEViT: img_size {img_size} is smaller than the patch size "
                             f"{patch_size}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_channels,
                         embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, drop_path_rate=drop_path_rate, num_classes=0,
                         global_pool="", fc_norm=False, learnable_pos_embed=True,
                         dynamic_img_size=True, rel_pos_bias=use_rel_pos_bias,
                         block_layer=CheckpointedBlock)
        self.with_cp = bool(with_cp)
        for blk in self.blocks:
            blk.with_cp = self.with_cp
        self.norm = nn.Identity()  # BEiT/iBOT dense transfer: features straight from blocks
        if out_indices is None:
            out_indices = default_out_indices(depth)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < depth for i in out_indices):
            raise ConfigError(f"MixedAEViT: out_indices {out_indices} out of range for depth {depth}")
        if with_adapter and len(out_indices) != 4:
            raise ConfigError(f"MixedAEViT: the 4-scale adapter needs 4 out_indices, got {out_indices}")
        self.out_indices = out_indices
        self.with_adapter = with_adapter
        if with_adapter:
            self._build_adapter(dim, tuple(int(t) for t in out_strides), norm_cfg)
        else:
            self.out_strides = (patch_size,) * len(out_indices)
        if pretrained is not None and init_cfg is not None:
            raise ConfigError("MixedAEViT: give either pretrained= or init_cfg=, not both")
        if pretrained is not None:
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.init_cfg = init_cfg
        self.is_init = False
        self.frozen_stages = frozen_stages
        self._mm_ready = True
        self._freeze()

    def _build_adapter(self, dim: int, strides: tuple[int, ...], norm_cfg: dict | None) -> None:
        factors = adapter_factors(self.patch_size, strides)
        norm_cfg = dict(type="SyncBN", requires_grad=True) if norm_cfg is None else norm_cfg
        for i, f in enumerate(factors):
            setattr(self, f"fpn{i + 1}", resample_branch(dim, f, norm_cfg))
        self.out_strides = strides

    @property
    def num_layers(self) -> int:
        return self.depth

    def _freeze(self) -> None:
        if self.frozen_stages < 0:
            return
        mods = [self.patch_embed] + list(self.blocks[:self.frozen_stages])
        for p in [self.cls_token, self.pos_embed] + [p for m in mods for p in m.parameters()]:
            p.requires_grad = False
        for m in mods:
            m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_mm_ready", False) and mode:
            self._freeze()
        return self

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B = x.shape[0]
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:   # mmseg ViT's padding='corner'
            p = self.patch_size
            x = F.pad(x, (0, -W % p, 0, -H % p))
        tokens, grid = self.embed(x)
        _, outs = self.forward_blocks(tokens, out_indices=self.out_indices, grid=grid)
        feats = [o[:, self.num_prefix_tokens:].transpose(1, 2).reshape(B, -1, *grid)
                 for o in outs]
        if self.with_adapter:
            feats = [self.fpn1(feats[0]), self.fpn2(feats[1]), self.fpn3(feats[2]),
                     self.fpn4(feats[3])]
        return tuple(feats)

    # ---- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        if not getattr(self, "_mm_ready", False):
            return super().init_weights()  # called by VisionTransformer.__init__
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else \
            ([self.init_cfg] if self.init_cfg else [])
        for c in cfgs:
            if c.get("type") != "Pretrained":
                raise ConfigError(f"MixedAEViT: unsupported init_cfg type {c.get('type')!r} "
                                 f"(only 'Pretrained'; the default init is MAE's)")
            if c.get("prefix"):
                raise ConfigError("MixedAEViT: init_cfg prefix is not supported; the loader "
                                 "finds the backbone weights in any known layout")
            self.load_pretrained(c["checkpoint"])
        self.is_init = True

    def load_pretrained(self, path: str) -> dict:
        """Load ViT weights from any supported layout; raise on anything unexpected."""
        sd, _ = read_weights(path)
        source, kept, dropped = extract_vit(sd)
        own = self.state_dict()
        ignored = {k: "final norm / classification head (unused by the dense backbone)"
                   for k in kept if HEAD_KEY.match(k) and k not in own}
        has_rel = any(REL_POS_KEY.match(k) for k in kept)
        if has_rel and not self.use_rel_pos_bias:
            rel = [k for k in kept if REL_POS_KEY.match(k)]
            raise CheckpointError(
                f"{path}: checkpoint has relative position tables ({format_names(rel, 2)}) but the "
                f"backbone was built with use_rel_pos_bias=False")

        def optional(k: str) -> bool:
            if k.startswith(("fpn1.", "fpn2.", "fpn3.", "fpn4.")):
                return True  # adapter: trained from scratch
            return REL_POS_KEY.match(k) is not None and not has_rel

        ckpt_grid = None
        if "pos_embed" in kept:   # pretraining grids are square; a grid of ours may not be
            n = kept["pos_embed"].shape[1] - self.num_prefix_tokens
            grid = tuple(self.grid_size)
            ckpt_grid = grid if n == grid[0] * grid[1] else square_grid(n, f"{path}: pos_embed")

        def resize_pos(t, shape):  # checked square above; resampled by the ViT's load hook
            return t

        def resize_rel(t, shape):
            if t.shape[0] == relative_position_table_size(self.grid_size):
                return t
            side = int(round(((t.shape[0] - 3) ** 0.5 + 1) / 2))
            if relative_position_table_size((side, side)) != t.shape[0]:
                raise CheckpointError(f"relative position table with {t.shape[0]} rows is "
                                         f"not from a square grid")
            return resize_relative_position_table(t, (side, side), self.grid_size)

        report = load_into(self, kept, what=str(path), optional_missing=optional,
                           ignored=ignored, resize={"pos_embed": resize_pos, **{
                               k: resize_rel for k in kept if REL_POS_KEY.match(k)}})
        dropped += [(k, ignored[k]) for k in report["ignored"]]
        print_log("MixedAEViT: " + load_report_line(path, source, report, dropped,
                                                    (ckpt_grid, self.grid_size)
                                                    if ckpt_grid else None), logger="current")
        return dict(source=source, loaded=report["loaded"], missing=report["missing"],
                    dropped=dropped)
