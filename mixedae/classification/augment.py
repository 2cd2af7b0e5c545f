"""Fine-tuning augmentation and loss (Table 5 recipe): timm's training transform with
RandAugment (posterize fixed for Pillow >= 12) and random erasing, timm Mixup / CutMix with
label smoothing, and the matching loss."""
from __future__ import annotations

import torch.nn as nn


def build_transforms(args):
    from timm.data import create_transform
    from mixedae.classification.datasets import eval_transform
    train_tf = create_transform(
        input_size=args.img_size, is_training=True, auto_augment=None if args.aa in ("", "none")
        else args.aa, interpolation="bicubic", re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, color_jitter=None)
    _patch_posterize(train_tf)
    return train_tf, eval_transform(args.img_size, crop_pct=0.875)


def _safe_posterize(img, bits_to_keep, **_):
    """timm's posterize, also for 0 bits (RandAugment 'inc1' at magnitude 10): Pillow >= 12
    rejects bits=0, which older Pillow mapped to an all-black image; keep that behaviour."""
    from PIL import Image, ImageOps
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    from timm.data.auto_augment import RandAugment, posterize
    for t in getattr(transform, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.aug_fn is posterize:
                    op.aug_fn = _safe_posterize


def build_mixup(args, num_classes: int):
    """timm Mixup (soft targets) when mixup/cutmix is on, else None."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode="batch",
                 label_smoothing=args.smoothing, num_classes=num_classes)


def build_loss(args, mixup):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()
