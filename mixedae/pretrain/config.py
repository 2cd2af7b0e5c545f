"""Pretraining configuration: one dataclass, paper presets (Tables 3, 4, 7) and validation.

Method switches (all baselines live in the same code):
  mixing       'none' (MAE random masking) | 'compose' | 'full'                 (Sec. 3.1, Fig. 4)
  attention    'global' | 'topk' (homologous attention, Eq. 6) | 'masked'
               (self-attention restricted to true homologous patches, Tab. 7a)
  homo_con     homologous contrastive loss (Eq. 7); with mixing='none' it is applied across
               the visible patches of groups of 1/r images (MAE + HomoCon, Tab. 7c)
  seg_embed_mode  how the sine-cosine segment embedding (Appendix B) enters the encoder:
               'residual' (added before every block) | 'attention' (every block's q/k input
               only) | 'input' (once, BERT) | 'none'   (``mixedae.model.segment_embedding``)
  homo_cls     cls token in homologous attention: 'always_visible' (a global query, a key
               visible to every patch) | 'topk' (literal Eq. 6 on whole rows)
               (``mixedae.model.attention.homologous``)
Default ``seg_embed_mode='residual'`` is the paper's text (App. B: sine-cosine segment
embeddings "added to the input of each Transformer layer"; Tab. 7c measures the method without
them as worse); ``homo_cls='always_visible'``. Every preset that stands for a paper row carries
the paper's reading of that row (``PRESETS``; docs/recipes.md lists them). The CPU-scale Fig. 6
finding (docs/reproduction.md) is kept as a finding; ``--set seg_embed_mode=none`` (or
attention / input) is one flag away, and ``mixedae experiment fig6 --scale gpu`` is the
experiment that can move the default.
Loading old configs: every version wrote every field (``to_json`` dumps the dataclass), so a
stored ``seg_embed_mode`` is kept as it is (runs of 2026-11-28..12-07 stored ``none``, the
default then); configs written before ``seg_embed_mode`` existed (a boolean ``seg_embed`` key)
load as 'residual' / 'none' with ``homo_cls='always_visible'``, which is what they ran.
Configs written before 2026-12-07 also hold ``topk_select`` and ``topk_select_fp32``, benchmark
switches since removed (``IGNORED_KEYS``): 'sort' selected the same keys as 'topk', and every
paper preset ranked on fp32 logits, which is the one ranking now; they load with a note.

The model's arguments are a ``mixedae.model.mixed_autoencoder.ModelConfig`` built from the
fields of the same names (``model_config()``, after ``validate()``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
import warnings
from dataclasses import dataclass

from mixedae.model.attention.homologous import CLS_MODES, IMPLS
from mixedae.model.mixed_autoencoder import ModelConfig
from mixedae.model.segment_embedding import MODES as SEG_EMBED_MODES
from mixedae.model.vit import VIT_SIZES
from mixedae.pretrain.input_pipeline import DECODES
from mixedae.runtime.errors import ConfigError

FP32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: the weights' dtype
# keys of old config.json files that no longer select anything (module docstring)
IGNORED_KEYS = {
    "topk_select": "the K best keys are found by torch.topk ('sort' selected the same keys)",
    "topk_select_fp32": "keys are always ranked on fp32 logits",
}


_MODEL = ModelConfig()  # the model's defaults have one owner: ModelConfig


@dataclass
class PretrainConfig:
    # model
    model: str = _MODEL.model  # ViT size: micro | tiny | small | base | large
    img_size: int = _MODEL.img_size
    patch_size: int = _MODEL.patch_size
    decoder_dim: int = _MODEL.decoder_dim
    decoder_depth: int = _MODEL.decoder_depth
    decoder_heads: int = _MODEL.decoder_heads
    norm_pix_loss: bool = _MODEL.norm_pix_loss  # normalized-pixel targets (Eq. 4, MAE)
    # method
    mixing: str = _MODEL.mixing  # none | compose | full
    mix_ratio: float = _MODEL.mix_ratio  # r; also the MAE keep ratio (1 - mask ratio)
    mask_patch_size: int = _MODEL.mask_patch_size  # mixing-mask granularity in pixels
    attention: str = _MODEL.attention  # global | topk | masked
    topk_ratio: float | None = _MODEL.topk_ratio  # K = topk_ratio · L; None → r
    num_global_layers: int = _MODEL.num_global_layers  # leading global layers (Tab. 3e)
    attn_impl: str = _MODEL.attn_impl  # Eq. 6: sdpa | explicit | triton | flex | fused (CUDA)
    homo_con: bool = _MODEL.homo_con
    homo_con_weight: float = _MODEL.homo_con_weight  # λ (Eq. 8)
    homo_con_tau: float = _MODEL.homo_con_tau  # τ (Eq. 7)
    homo_con_dim: int = _MODEL.homo_con_dim  # projector output
    seg_embed_mode: str = _MODEL.seg_embed_mode  # residual|attention|input|none (App. B, 7c)
    homo_cls: str = _MODEL.homo_cls  # always_visible | topk
    # optimisation (Table 4)
    epochs: float = 300                 # may be fractional (the schedule is per step)
    warmup_epochs: float = 40
    batch_size: int = 4096              # global batch (all GPUs × accumulation)
    blr: float = 7.5e-5                 # lr = blr · batch / 256
    lr: float | None = None             # absolute lr overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    accum_iter: int = 1
    # data
    crop_scale: tuple[float, float] = (0.2, 1.0)
    decode: str = "cpu"                 # input pipeline: cpu (PIL workers) | gpu (batched
                                        # decode + augment on the run's device), input_pipeline

    def model_config(self) -> ModelConfig:
        """The model's arguments (the fields of the same names), after ``validate()``."""
        self.validate()
        return self._model_fields()

    def _model_fields(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name)
                              for f in dataclasses.fields(ModelConfig)})

    @property
    def group_size(self) -> int:
        return self._model_fields().group_size

    @property
    def num_patches(self) -> int:
        return self._model_fields().num_patches

    @property
    def topk(self) -> int:
        return self._model_fields().topk

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def micro_batch_size(self, world_size: int) -> int:
        """Per-rank micro-batch = batch / (world · accum); must be a positive multiple of 1/r."""
        denom = world_size * self.accum_iter
        if self.batch_size % denom:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by world_size "
                              f"({world_size}) × accum_iter ({self.accum_iter})")
        micro = self.batch_size // denom
        if micro % self.group_size:
            raise ConfigError(f"per-rank micro-batch {micro} (batch_size={self.batch_size} / "
                              f"(world {world_size} × accum {self.accum_iter})) is not "
                              f"divisible by the group size 1/r={self.group_size}")
        return micro

    def validate(self) -> "PretrainConfig":
        """Raise ConfigError with one clear message for anything that cannot train: types
        and value ranges first (so that no later check divides by zero), then the method."""
        def bad(msg):
            raise ConfigError(msg)
        _check_types(self)
        _check_ranges(self)
        if self.model not in VIT_SIZES:
            bad(f"model={self.model!r} unknown; choose from {sorted(VIT_SIZES)}")
        if self.mixing not in ("none", "compose", "full"):
            bad(f"mixing={self.mixing!r} must be 'none', 'compose' or 'full'")
        if self.attention not in ("global", "topk", "masked"):
            bad(f"attention={self.attention!r} must be 'global', 'topk' or 'masked'")
        if self.attn_impl not in IMPLS:
            bad(f"attn_impl={self.attn_impl!r} must be one of {IMPLS}")
        if self.seg_embed_mode not in SEG_EMBED_MODES:
            bad(f"seg_embed_mode={self.seg_embed_mode!r} must be one of {SEG_EMBED_MODES}")
        if self.homo_cls not in CLS_MODES:
            bad(f"homo_cls={self.homo_cls!r} must be one of {CLS_MODES}")
        if self.decode not in DECODES:
            bad(f"decode={self.decode!r} must be one of {DECODES}")
        if not 0 < self.mix_ratio <= 0.5:
            bad(f"mix_ratio r={self.mix_ratio} must be in (0, 0.5]")
        if not math.isclose(1 / self.mix_ratio, self.group_size, abs_tol=1e-6):
            bad(f"mix_ratio r={self.mix_ratio}: 1/r={1 / self.mix_ratio:g} must be an integer")
        if self.img_size % self.patch_size:
            bad(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.mixing != "none" and (self.img_size % self.mask_patch_size
                                      or self.mask_patch_size % self.patch_size):
            bad(f"img_size={self.img_size} must be divisible by mask_patch_size="
                f"{self.mask_patch_size}, itself a multiple of patch_size={self.patch_size}")
        if self.attention == "topk" and self.topk > self.num_patches:
            bad(f"TopK K={self.topk} exceeds the number of patches L={self.num_patches}")
        if self.mixing == "none" and self.attention != "global":
            bad(f"attention={self.attention!r} needs mixing; MAE (mixing='none') uses 'global'")
        if self.batch_size % self.group_size:
            bad(f"batch_size={self.batch_size} is not divisible by 1/r={self.group_size}")
        if not 0 <= self.num_global_layers <= VIT_SIZES[self.model][1]:
            bad(f"num_global_layers={self.num_global_layers} outside [0, depth]")
        lr = self.effective_lr()
        if not lr <= FP32_MAX:  # AdamW casts lr (and lr · wd) to the fp32 of the weights
            which = "lr" if self.lr is not None else \
                f"blr · batch_size / 256 = {self.blr:g} · {self.batch_size} / 256"
            bad(f"learning rate {which}={lr:g} is beyond the float32 range of the weights "
                f"(max {FP32_MAX:.3g}); lower --lr / --blr")
        if self.accum_iter < 1:
            bad(f"accum_iter={self.accum_iter} must be >= 1")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        d = dict(d)
        if "seg_embed" in d:  # configs written before seg_embed_mode / homo_cls existed
            legacy = d.pop("seg_embed")
            if not isinstance(legacy, bool):
                raise ConfigError(f"seg_embed={legacy!r} must be true or false "
                                  f"(or use seg_embed_mode, one of {SEG_EMBED_MODES})")
            mode = "residual" if legacy else "none"
            if d.setdefault("seg_embed_mode", mode) != mode:
                raise ConfigError(f"seg_embed={legacy} contradicts "
                                  f"seg_embed_mode={d['seg_embed_mode']!r}")
            d.setdefault("homo_cls", "always_visible")
        for key in sorted(set(d) & set(IGNORED_KEYS)):
            value = d.pop(key)
            if value not in ("topk", True):  # not what the run ranked with: say so
                warnings.warn(f"config key {key}={value!r} is no longer used: "
                              f"{IGNORED_KEYS[key]}", stacklevel=2)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    def replace(self, **kw) -> "PretrainConfig":
        return PretrainConfig.from_dict({**dataclasses.asdict(self), **kw})


def _type_ok(value, hint) -> bool:
    """``value`` fits a field annotation (int, float, bool, str, X | None, tuple[float, ...])."""
    if value is None:
        return type(None) in typing.get_args(hint)
    if typing.get_args(hint) and typing.get_origin(hint) is not tuple:  # X | None
        return any(_type_ok(value, h) for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        return isinstance(value, tuple) and len(value) == len(items) and all(
            _type_ok(v, h) for v, h in zip(value, items))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(cfg: PretrainConfig) -> None:
    for name, hint in typing.get_type_hints(PretrainConfig).items():
        value = getattr(cfg, name)
        if not _type_ok(value, hint):
            want = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise ConfigError(f"{name}={value!r} must be of type {want}")


_POSITIVE = ("img_size", "patch_size", "mask_patch_size", "decoder_dim", "decoder_depth",
             "decoder_heads", "homo_con_dim", "epochs", "batch_size", "blr", "lr",
             "homo_con_tau", "topk_ratio")
_NON_NEGATIVE = ("warmup_epochs", "min_lr", "weight_decay", "homo_con_weight")


def _check_ranges(cfg: PretrainConfig) -> None:
    for name in _POSITIVE + _NON_NEGATIVE:
        v = getattr(cfg, name)
        if v is not None and (not math.isfinite(v) or v < 0 or (v == 0 and name in _POSITIVE)):
            raise ConfigError(f"{name}={v} must be {'positive' if name in _POSITIVE else '>= 0'}")
    if not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"betas={cfg.betas} must be two numbers in [0, 1)")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"crop_scale={cfg.crop_scale} must be (min, max) with 0 < min <= max <= 1")
    if cfg.decoder_dim % cfg.decoder_heads:
        raise ConfigError(f"decoder_dim={cfg.decoder_dim} is not divisible by decoder_heads="
                          f"{cfg.decoder_heads}")


_MAE = dict(mixing="none", attention="global", homo_con=False, seg_embed_mode="none",
            blr=1.5e-4)
# Segment-embedding reading per row (App. B; Tab. 3f, 7a-7c). The segment embedding is a part
# of homologous recognition (Sec. 3.2: "to provide necessary information to complete homologous
# recognition"), so rows with HomoAtt or HomoCon have it, rows without (MAE, the naive mixing
# baseline of Sec. 3.1 that precedes Sec. 3.2, the masked-SA baseline of Tab. 7a "without
# homologous recognition") do not; Tab. 7c marks it per row (MAE + HomoCon: SE yes, MixedAE
# without SE: no). The reading of each preset is written beside it and in docs/recipes.md.
PRESETS: dict[str, dict] = {
    # paper models (Table 4; compose batch 4096, full batch 1024); SE: App. B (residual)
    "mixedae_base": dict(model="base", seg_embed_mode="residual"),
    "mixedae_base_full": dict(model="base", mixing="full", batch_size=1024,
                              seg_embed_mode="residual"),
    "mixedae_base_full_light": dict(model="base", mixing="full", batch_size=1024,
                                    decoder_dim=256, decoder_depth=2, decoder_heads=8,
                                    seg_embed_mode="residual"),
    "mixedae_large": dict(model="large", batch_size=2048, epochs=1600,   # Appendix C, Tab. 6
                          seg_embed_mode="residual"),
    "mixedae_large_full": dict(model="large", mixing="full", batch_size=1024, epochs=1600,
                               seg_embed_mode="residual"),
    # baselines (ablations use the MAE recipe blr 1.5e-4, Sec. 4.4)
    "mae_base": dict(model="base", **_MAE),                              # SE: none (MAE)
    "mae_large": dict(model="large", **_MAE, epochs=1600),               # Tab. 6 baseline
    "naive_mix_base": dict(model="base", attention="global", homo_con=False,  # Tab. 3f row 1,
                           seg_embed_mode="none", blr=1.5e-4),          # 7a: Sec. 3.1, no SE
    "mix_masked_sa_base": dict(model="base", attention="masked", homo_con=False,  # Tab. 7a:
                               seg_embed_mode="none", blr=1.5e-4),      # no homologous recog.
    "homo_att_only_base": dict(model="base", attention="topk", homo_con=False,  # Tab. 3f
                               seg_embed_mode="residual", blr=1.5e-4),
    "homo_con_only_base": dict(model="base", attention="global", homo_con=True,  # Tab. 3f
                               seg_embed_mode="residual", blr=1.5e-4),
    "mixedae_no_seg_base": dict(model="base", seg_embed_mode="none", blr=1.5e-4),  # Tab. 7c r1
    # Tab. 7c row 3 / Tab. 3f row 4 (the default MixedAE at the ablation blr); kept under its
    # old name, which runs and pipelines written before record
    "mixedae_seg_residual_base": dict(model="base", seg_embed_mode="residual", blr=1.5e-4),
    "mae_homocon_base": dict(model="base", **{**_MAE, "homo_con": True,  # Tab. 7c row 2:
                                              "seg_embed_mode": "residual"}),  # SE yes
    # small sizes for demos and tests (the paper default, SE residual)
    "mixedae_tiny": dict(model="tiny", decoder_dim=128, decoder_depth=2, decoder_heads=4,
                         seg_embed_mode="residual"),
    "mae_tiny": dict(model="tiny", decoder_dim=128, decoder_depth=2, decoder_heads=4, **_MAE),
    # first contact on a CPU: the paper's method (SE residual, r, K = rL, λ, τ) on a micro ViT at
    # 64 px, sized to run ../shared/data/imagenet_tiny (500 images) in about a minute; not a
    # paper row
    "mixedae_cpu": dict(model="micro", img_size=64, patch_size=8, mask_patch_size=16,
                        decoder_dim=64, decoder_depth=2, decoder_heads=4, homo_con_dim=32,
                        batch_size=16, lr=1e-3, epochs=2, warmup_epochs=0.2,
                        seg_embed_mode="residual"),
}


def get_preset(name: str, **overrides) -> PretrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    base = dict(PRESETS[name])
    if "seg_embed" in overrides:  # the legacy boolean overrides the preset's reading
        base.pop("seg_embed_mode", None)
    return PretrainConfig.from_dict({**base, **overrides}).validate()
