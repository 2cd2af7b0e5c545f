"""The project's one Vision Transformer: pretraining encoder, classifier and mm backbone.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``fc_norm``, ``head``), which is also the layout of the official MAE checkpoints, so weights
move between timm, MAE and this code without renaming.

* Fixed 2-D sine-cosine position embedding (learnable when fine-tuning), resized bicubically
  (patch part only) for other input sizes; a checkpoint's embedding made for another square
  grid is resampled to the model's grid when it is loaded (a ``load_state_dict`` pre-hook,
  mmpretrain's ``_prepare_pos_embed``), so every loader gets the same resize.
* Optional BEiT-style relative position bias (``rel_pos_bias=True``, dense fine-tuning): one
  zero-initialised table per block, stored as ``blocks.N.attn.relative_position_bias_table``
  and added to the attention logits as an additive ``attn_mask``; resized bicubically for
  other grids. Off by default.
* Pre-norm blocks; the attention is pluggable: global SDPA, an additive/boolean ``attn_mask``
  (masked self-attention, relative position bias) or homologous TopK attention (Eq. 6) when a
  ``HomologousContext`` is passed.
* ``seg_embed`` (B, N, D), if given to ``forward_blocks``, is added to the input of every block;
  ``qk_embed`` (B, N, D) is added to every block's normalised attention input for the queries
  and keys only (never the values or the residual stream). Both carry the segment embedding of
  Appendix B, per ``segment_embedding.MODES``.
* xavier_uniform init of all Linear layers, as in the paper (Appendix B) and MAE.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.layers.pos_embed_rel import gen_relative_position_index

from mixedae.model.attention.homologous import HomologousContext, homologous_attention
from mixedae.model.pos_embed import resize_pos_embed, sincos_2d


class Attention(nn.Module):
    """Multi-head self-attention; global, masked or homologous (TopK) depending on inputs."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor, qk_embed: torch.Tensor | None = None):
        """q, k, v (B, H, N, d) of ``x`` as ``forward`` computes them (``qk_embed``: below)."""
        B, N, C = x.shape
        qkv = self.qkv(x)
        if qk_embed is not None:  # W_q·e and W_k·e; the values see x alone
            qkv = qkv + F.pad(F.linear(qk_embed, self.qkv.weight[:2 * C]), (0, C))
        return qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                homo: HomologousContext | None = None,
                qk_embed: torch.Tensor | None = None) -> torch.Tensor:
        """``qk_embed`` (B or 1, N, C), if given, is added to x for the queries and keys only."""
        B, N, C = x.shape
        q, k, v = self.heads(x, qk_embed)
        if homo is not None:
            x = homologous_attention(q, k, v, homo)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block (the attention's kind is chosen by ``forward``'s inputs)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_layer: Callable = partial(nn.LayerNorm, eps=1e-6)):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x, attn_mask=None, homo: HomologousContext | None = None, qk_embed=None):
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask=attn_mask, homo=homo,
                                         qk_embed=qk_embed))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def relative_position_index(grid_hw: Sequence[int], device=None) -> torch.Tensor:
    """(1+h·w, 1+h·w) index into a BEiT relative-position table for an h×w grid with a cls
    token (timm's ``gen_relative_position_index``): patch pairs use their (dy, dx) offset; the
    last three entries of the table are cls→patch, patch→cls and cls→cls."""
    return gen_relative_position_index((int(grid_hw[0]), int(grid_hw[1])), class_token=True,
                                       device=device)


def relative_position_table_size(grid_hw: Sequence[int]) -> int:
    return (2 * int(grid_hw[0]) - 1) * (2 * int(grid_hw[1]) - 1) + 3


def resize_relative_position_table(table: torch.Tensor, old_grid: Sequence[int],
                                   new_grid: Sequence[int]) -> torch.Tensor:
    """Bicubic resize of the (dy, dx) part of a (T, heads) table; the 3 cls entries are kept.
    (timm's ``resize_rel_pos_bias_table`` uses a different interpolation: up to 2.5 apart on a
    random 14→16 table, so it is not a drop-in replacement.)"""
    if tuple(old_grid) == tuple(new_grid):
        return table
    (h0, w0), (h1, w1) = old_grid, new_grid
    if table.shape[0] != relative_position_table_size(old_grid):
        raise ValueError(f"relative position table has {table.shape[0]} rows, expected "
                         f"{relative_position_table_size(old_grid)} for grid {tuple(old_grid)}")
    spatial = table[:-3].T.reshape(1, -1, 2 * h0 - 1, 2 * w0 - 1).float()
    spatial = F.interpolate(spatial, size=(2 * h1 - 1, 2 * w1 - 1), mode="bicubic",
                            align_corners=False)
    spatial = spatial.reshape(table.shape[1], -1).T.to(table.dtype)
    return torch.cat([spatial, table[-3:]], dim=0)


def relative_position_bias(table: torch.Tensor, table_grid: Sequence[int],
                           grid_hw: Sequence[int], index: torch.Tensor | None = None):
    """(1, heads, 1+h·w, 1+h·w) additive attention bias from a table made for ``table_grid``."""
    table = resize_relative_position_table(table, table_grid, grid_hw)
    if index is None:
        index = relative_position_index(grid_hw, table.device)
    n = index.shape[0]
    return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)


def init_weights_xavier(module: nn.Module) -> None:
    """MAE / ViT-official init: xavier_uniform Linear, zero bias, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_STEM = re.compile(r"^(?:cls_token|pos_embed|patch_embed)(?:\.|$)")  # layer depth 0
_BLOCK = re.compile(r"^blocks\.(\d+)\.")                                # block i: depth i + 1


class VisionTransformer(nn.Module):
    """ViT with cls token and fixed (optionally learnable) 2-D sin-cos position embedding.

    global_pool: '' (features only), 'avg' (mean of patch tokens, MAE fine-tuning) or 'token'.
    fc_norm: LayerNorm after pooling instead of the final ``norm`` (MAE/timm 'avg' style).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 num_classes: int = 0, global_pool: str = "", fc_norm: bool | None = None,
                 learnable_pos_embed: bool = False, dynamic_img_size: bool = True,
                 block_layer: Callable = Block, rel_pos_bias: bool = False):
        super().__init__()
        if global_pool not in ("", "avg", "token"):
            raise ValueError(f"global_pool must be '', 'avg' or 'token', got {global_pool!r}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size = patch_size
        self.num_prefix_tokens = 1
        self.global_pool = global_pool
        self.dynamic_img_size = dynamic_img_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      strict_img_size=not dynamic_img_size,
                                      dynamic_img_pad=False)
        self.grid_size = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, *self.grid_size, 1)[None],
                                      requires_grad=learnable_pos_embed)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            block_layer(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i],
                        norm_layer=norm_layer) for i in range(depth)])
        self.use_rel_pos_bias = rel_pos_bias
        if rel_pos_bias:  # zero init: starts as plain absolute-position attention (BEiT/MAE)
            size = relative_position_table_size(self.grid_size)
            for blk in self.blocks:
                blk.attn.relative_position_bias_table = nn.Parameter(
                    torch.zeros(size, num_heads))
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.num_classes = num_classes
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()
        self.register_load_state_dict_pre_hook(_prepare_pos_embed)

    def init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data  # init patch embed like a Linear (MAE)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights_xavier)
        if isinstance(self.head, nn.Linear):  # small head init for fine-tuning (MAE)
            trunc_normal_(self.head.weight, std=2e-5)

    # ---- what the model says about its parameters (timm / mmpretrain protocols) ---------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping: the stem (embeddings), then one group per block; the
        final norm last (timm's ``(99999,)``), as do the parameters no pattern matches (head,
        fc_norm, adapters). ``coarse`` gives the same groups (one block is the finest unit)."""
        return dict(stem=_STEM.pattern, blocks=[(_BLOCK.pattern, None), (r"^norm", (99999,))])

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """(layer depth of ``param_name``, number of depths) as mmpretrain's ViT reports it for
        layer-wise lr decay (BEiT / MAE): 0 = stem (patch embedding, cls token, position
        embedding), i + 1 = block i, ``depth + 1`` = everything else, including names without
        ``prefix`` (e.g. 'backbone.' inside a segmentor); there are ``depth + 2`` depths."""
        num_depths = self.depth + 2
        if not param_name.startswith(prefix):
            return num_depths - 1, num_depths
        name = param_name[len(prefix):]
        if _STEM.match(name):
            return 0, num_depths
        block = _BLOCK.match(name)
        return (int(block.group(1)) + 1 if block else num_depths - 1), num_depths

    # ---- embedding -------------------------------------------------------------------------
    def pos_embed_for(self, grid_hw: Sequence[int]) -> torch.Tensor:
        """Position embedding (1, 1+h·w, D) for a patch grid, bicubic-resized if needed."""
        return resize_pos_embed(self.pos_embed, self.grid_size, grid_hw, self.num_prefix_tokens)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images → (B, 1+L, D) tokens (cls first) with position embedding, and the grid."""
        H, W = x.shape[-2:]
        grid = (H // self.patch_size, W // self.patch_size)
        x = self.patch_embed(x)
        if x.ndim == 4:
            x = x.flatten(1, 2)
        pos = self.pos_embed_for(grid)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x + pos[:, 1:]], dim=1), grid

    # ---- trunk -----------------------------------------------------------------------------
    def forward_blocks(self, x: torch.Tensor, seg_embed: torch.Tensor | None = None,
                       attn_mask: torch.Tensor | None = None,
                       homo: HomologousContext | None = None, num_global_layers: int = 0,
                       out_indices: Sequence[int] = (), grid: Sequence[int] | None = None,
                       qk_embed: torch.Tensor | None = None):
        """Run the blocks. Layers ``i >= num_global_layers`` use ``homo`` if given; ``attn_mask``,
        ``seg_embed`` (added to each block's input) and ``qk_embed`` (added to each block's
        query/key input) apply to every layer. Returns the final tokens and the tokens after each
        block in ``out_indices``. ``grid`` (h, w) is only used by the relative position bias
        (default: a square grid inferred from the token count)."""
        outs = []
        index = None
        if self.use_rel_pos_bias:
            if grid is None:
                side = int(round((x.shape[1] - self.num_prefix_tokens) ** 0.5))
                grid = (side, side)
            if grid[0] * grid[1] + self.num_prefix_tokens != x.shape[1]:
                raise ValueError(f"grid {tuple(grid)} does not match {x.shape[1]} tokens")
            index = relative_position_index(grid, x.device)
        for i, blk in enumerate(self.blocks):
            if seg_embed is not None:
                x = x + seg_embed
            mask = attn_mask
            if index is not None:
                bias = relative_position_bias(blk.attn.relative_position_bias_table,
                                              self.grid_size, grid, index).to(x.dtype)
                if attn_mask is None:
                    mask = bias
                elif attn_mask.dtype == torch.bool:  # True = may attend (SDPA convention)
                    mask = bias.masked_fill(~attn_mask, float("-inf"))
                else:
                    mask = attn_mask + bias
            x = blk(x, attn_mask=mask,
                    homo=homo if (homo is not None and i >= num_global_layers) else None,
                    qk_embed=qk_embed)
            if i in out_indices:
                outs.append(x)
        return x, outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.embed(x)
        x, _ = self.forward_blocks(x, grid=grid)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _prepare_pos_embed(vit: VisionTransformer, state_dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: a (1, prefix + s·s, D) position embedding of a square s×s
    grid other than the model's is resampled to the model's grid (``resize_pos_embed``:
    timm's ``resample_abs_pos_embed``, bicubic), in ``state_dict`` itself. Any other shape is
    left as it is, for ``load_state_dict`` (or the caller's check) to report."""
    key = prefix + "pos_embed"
    pos = state_dict.get(key)
    own = vit.pos_embed.shape
    if pos is None or pos.shape == own or pos.ndim != 3 or pos.shape[-1] != own[-1]:
        return
    n = pos.shape[1] - vit.num_prefix_tokens
    side = math.isqrt(max(n, 0))
    if n > 0 and side * side == n:
        state_dict[key] = resize_pos_embed(pos, (side, side), vit.grid_size,
                                           vit.num_prefix_tokens)


# ---- sizes -----------------------------------------------------------------------------------
VIT_SIZES = {
    # name: (embed_dim, depth, num_heads)
    "micro": (64, 4, 2),      # tests
    "tiny": (192, 12, 3),     # demo
    "small": (384, 12, 6),
    "base": (768, 12, 12),    # ViT-B/16 (paper)
    "large": (1024, 24, 16),  # ViT-L/16 (paper)
}


def create_vit(size: str = "base", patch_size: int = 16, **kwargs) -> VisionTransformer:
    """e.g. ``create_vit('base', num_classes=1000, global_pool='avg', drop_path_rate=0.1)``."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose from {sorted(VIT_SIZES)}")
    d, n, h = VIT_SIZES[size]
    return VisionTransformer(patch_size=patch_size, embed_dim=d, depth=n, num_heads=h, **kwargs)
