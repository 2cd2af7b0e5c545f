"""Mixed Autoencoder (Fig. 2) and, in the same code, MAE and the ablation baselines.

Forward pass for mixing = 'compose' | 'full' (Sec. 3):
  1. groups of g = 1/r images are mixed by random symmetric masks (Eq. 1–2, ``mixing``);
  2. the encoder (the project's ViT) sees the mixed samples with segment embeddings (as
     ``seg_embed_mode`` says, ``segment_embedding``); layers after the first
     ``num_global_layers`` use homologous TopK attention (Eq. 6, ``attention.homologous``, cls
     per ``homo_cls``), or, for the Tab. 7a baseline, self-attention masked to the true
     homologous patches;
  3. the homologous contrastive loss (Eq. 7) runs on the post-LayerNorm patch features through
     a 128-d linear projector;
  4. tokens are unmixed with [MASK] tokens (Eq. 3) and decoded; the loss is the MSE on
     normalized pixels of each image's hidden patches (Eq. 4, mean as in MAE);
  5. L = L_recon + λ L_HomoCon (Eq. 8).
mixing = 'none' is MAE (random masking of 1 − r of the patches); with homo_con it applies
Eq. 7 across the visible patches of groups of g images (MAE + HomoCon, Tab. 7c), with the
segment embedding of each image's place in its group when ``seg_embed_mode`` is not 'none'
(Tab. 7c marks that row with segment embeddings).

The model takes its own arguments, ``ModelConfig`` (the pretraining config builds it with
``PretrainConfig.model_config()`` and validates every field before).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from mixedae.model.decoder import MAEDecoder
from mixedae.model.attention.homologous import HomologousContext
from mixedae.model.homologous_contrastive import homologous_contrastive_loss
from mixedae.model.mixing import mix_images, mixing_masks, source_onehot, unmix_tokens
from mixedae.model.segment_embedding import SegmentEmbedding
from mixedae.model.vit import create_vit


@dataclass(frozen=True)
class ModelConfig:
    """The arguments of ``MixedAutoencoder`` (same names as the pretraining config's fields;
    values are checked by ``PretrainConfig.validate``)."""
    model: str = "base"                 # ViT size (``vit.VIT_SIZES``)
    img_size: int = 224
    patch_size: int = 16
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True          # normalized-pixel targets (Eq. 4, MAE)
    mixing: str = "compose"             # none (MAE) | compose | full
    mix_ratio: float = 0.25             # r; also the MAE keep ratio
    mask_patch_size: int = 32           # mixing-mask granularity in pixels
    attention: str = "topk"             # global | topk (Eq. 6) | masked (Tab. 7a)
    topk_ratio: float | None = None     # K = topk_ratio · L; None → r
    num_global_layers: int = 1          # leading layers with global self-attention
    attn_impl: str = "sdpa"             # how Eq. 6 is computed (``attention.homologous.IMPLS``)
    homo_cls: str = "always_visible"    # cls token in Eq. 6 (``attention.homologous``)
    homo_con: bool = True               # Eq. 7
    homo_con_weight: float = 0.1        # λ (Eq. 8)
    homo_con_tau: float = 0.25          # τ (Eq. 7)
    homo_con_dim: int = 128             # projector output
    seg_embed_mode: str = "residual"    # ``segment_embedding.MODES``

    @property
    def group_size(self) -> int:
        """g = 1/r images per mixed group."""
        return round(1 / self.mix_ratio)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def topk(self) -> int:
        """K of Eq. 6."""
        ratio = self.mix_ratio if self.topk_ratio is None else self.topk_ratio
        return max(1, round(ratio * self.num_patches))


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, L, p·p·C) in MAE's order."""
    B, C, H, W = imgs.shape
    x = imgs.view(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    h, w = grid_hw
    B, C = x.shape[0], x.shape[-1] // (p * p)
    x = x.view(B, h, w, p, p, C)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, C, h * p, w * p)


class MixedAutoencoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = create_vit(cfg.model, patch_size=cfg.patch_size, img_size=cfg.img_size,
                                  dynamic_img_size=False)
        D = self.encoder.embed_dim
        self.grid = tuple(self.encoder.grid_size)
        self.group_size = cfg.group_size
        self.decoder = MAEDecoder(self.grid, D, cfg.decoder_dim, cfg.decoder_depth,
                                  cfg.decoder_heads, cfg.patch_size)
        self.seg_embed = SegmentEmbedding(D, self.group_size, cfg.seg_embed_mode) \
            if cfg.seg_embed_mode != "none" else None
        self.projector = nn.Linear(D, cfg.homo_con_dim) if cfg.homo_con else None
        if self.projector is not None:
            nn.init.xavier_uniform_(self.projector.weight)
            nn.init.zeros_(self.projector.bias)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.pos_embed", "encoder.cls_token", "decoder.pos_embed",
                "decoder.mask_token"}

    # ---- targets -----------------------------------------------------------------------------
    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        t = patchify(imgs, self.cfg.patch_size).float()
        if self.cfg.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    # ---- encoders ----------------------------------------------------------------------------
    def encode_mixed(self, imgs: torch.Tensor, src: torch.Tensor | None = None):
        """Mix (with random masks, or the given ``src`` (G, M, L)) and encode: post-LN tokens
        (G·M, 1+L, D), masks, mixed images and the TopK accuracy of every homologous layer."""
        cfg, enc, g = self.cfg, self.encoder, self.group_size
        B = imgs.shape[0]
        if B % g:
            raise ValueError(f"batch of {B} images is not divisible by the group size 1/r={g}")
        num_mix = 1 if cfg.mixing == "compose" else g
        if src is None:
            src = mixing_masks(B // g, num_mix, g, self.grid,
                               cfg.mask_patch_size // cfg.patch_size, device=imgs.device)
        mixed = mix_images(imgs, src, cfg.patch_size)
        flat_src = src.flatten(0, 1)  # (Nmix, L)
        x, _ = enc.embed(mixed)
        x, seg_kw = self.seg_embed.inject(x, flat_src) if self.seg_embed is not None else (x, {})
        homo, attn_mask = None, None
        if cfg.attention == "topk":
            homo = HomologousContext(k=cfg.topk, src=flat_src, impl=cfg.attn_impl,
                                     cls_mode=cfg.homo_cls)
        elif cfg.attention == "masked":
            same = flat_src[:, :, None] == flat_src[:, None, :]
            attn_mask = torch.ones(same.shape[0], 1, *(s + 1 for s in same.shape[1:]),
                                   dtype=torch.bool, device=imgs.device)
            attn_mask[:, 0, 1:, 1:] = same
        x, _ = enc.forward_blocks(x, attn_mask=attn_mask, homo=homo,
                                  num_global_layers=cfg.num_global_layers, **seg_kw)
        x = enc.norm(x)
        acc = torch.stack(homo.accuracies) if homo is not None and homo.accuracies \
            else x.new_zeros(0)
        return x, src, mixed, acc

    def encode_masked(self, imgs: torch.Tensor):
        """MAE: keep a random r fraction of the patches of every image."""
        enc = self.encoder
        x, _ = enc.embed(imgs)
        B, N, D = x.shape
        L = N - 1
        keep = int(L * self.cfg.mix_ratio)
        ids_keep = torch.rand(B, L, device=imgs.device).argsort(1)[:, :keep]
        vis = x[:, 1:].gather(1, ids_keep[..., None].expand(-1, -1, D))
        x, seg_kw = torch.cat([x[:, :1], vis], 1), {}
        if self.seg_embed is not None:  # MAE + HomoCon with SE (Tab. 7c row 2): the code of
            src = (torch.arange(B, device=x.device) % self.group_size)[:, None]  # the image's
            x, seg_kw = self.seg_embed.inject(x, src.expand(B, keep))  # place in its group
        x, _ = enc.forward_blocks(x, **seg_kw)
        return enc.norm(x), ids_keep

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, imgs: torch.Tensor) -> dict:
        cfg, g = self.cfg, self.group_size
        target = self.targets(imgs)
        B, L, P = target.shape
        dec = self.decoder
        if cfg.mixing == "none":
            z, ids_keep = self.encode_masked(imgs)
            h = dec.embed(z)
            tokens = dec.mask_token.expand(B, L, -1).to(h.dtype).scatter(
                1, ids_keep[..., None].expand(-1, -1, h.shape[-1]), h[:, 1:])
            pred = dec(h[:, :1], tokens)
            hidden = torch.ones(B, L, dtype=torch.bool, device=imgs.device)
            hidden.scatter_(1, ids_keep, False)
            loss_recon = self._recon_loss(pred, target, hidden)
            homo_feats = z[:, 1:].reshape(B // g, g * ids_keep.shape[1], -1)
            homo_src = torch.arange(g, device=imgs.device).repeat_interleave(ids_keep.shape[1])
            homo_src = homo_src.expand(B // g, -1)
            acc = z.new_zeros(0)
        else:
            z, src, _, acc = self.encode_mixed(imgs)
            G, M, _ = src.shape
            h = dec.embed(z)
            tokens = unmix_tokens(h[:, 1:], src, dec.mask_token.to(h.dtype), g)  # (G·M·g, L, Dd)
            cls = h[:, :1].repeat_interleave(g, dim=0)
            pred = dec(cls, tokens).view(G, M, g, L, P)
            hidden = ~source_onehot(src, g)
            loss_recon = self._recon_loss(pred, target.view(G, 1, g, L, P), hidden)
            homo_feats, homo_src = z[:, 1:], src.flatten(0, 1)
        if self.projector is not None:  # Eq. (8)
            loss_homocon = homologous_contrastive_loss(self.projector(homo_feats), homo_src,
                                                       cfg.homo_con_tau)
            loss = loss_recon + cfg.homo_con_weight * loss_homocon
        else:
            loss, loss_homocon = loss_recon, torch.zeros((), device=imgs.device)
        # detached copies for logging (an aliasing detach() output made torch.compile drop the
        # grad of ``loss`` when the two coincide)
        return dict(loss=loss, loss_recon=loss_recon.detach().clone(),
                    loss_homocon=loss_homocon.detach().clone(), topk_acc=acc.detach().float())

    @staticmethod
    def _recon_loss(pred, target, hidden):
        """Eq. (4): MSE over each image's hidden patches (mean, as in MAE)."""
        err = (pred.float() - target).pow(2).mean(-1)
        hidden = hidden.expand(err.shape).float()
        return (err * hidden).sum() / hidden.sum()

    # ---- visualisation -----------------------------------------------------------------------
    @torch.no_grad()
    def visualize(self, imgs: torch.Tensor) -> dict:
        """Original, mixed input and per-source reconstruction in [0, 1] pixel space."""
        if self.cfg.mixing == "none":
            raise ValueError("visualize() shows mixing; the MAE baseline has no mixed input")
        cfg, g, p = self.cfg, self.group_size, self.cfg.patch_size
        mean = imgs.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = imgs.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        z, src, mixed, _ = self.encode_mixed(imgs)
        G, M, L = src.shape
        h = self.decoder.embed(z)
        pred = self.decoder(h[:, :1].repeat_interleave(g, 0), unmix_tokens(h[:, 1:], src,
                            self.decoder.mask_token.to(h.dtype), g)).float()
        pred = pred.view(G, M, g, L, -1)[:, 0]  # first mixed sample of each group
        orig = patchify(imgs, p).float().view(G, g, L, -1)
        if cfg.norm_pix_loss:  # undo the per-patch normalisation with the true patch stats
            mu, var = orig.mean(-1, keepdim=True), orig.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mu
        own = source_onehot(src[:, :1], g)[:, 0, :, :, None]  # (G, g, L, 1)
        recon = torch.where(own, orig, pred).view(G * g, L, -1)
        to01 = lambda x: (x * std + mean).clamp(0, 1)
        return dict(original=to01(imgs), mixed=to01(mixed.view(G, M, *mixed.shape[1:])[:, 0]),
                    reconstruction=to01(unpatchify(recon, p, self.grid)), group_size=g)

