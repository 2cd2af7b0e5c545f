"""Diagnostics of homologous recognition (Sec. 3.2, Fig. 6): can Eq. 7 be solved without it?

* ``SourceProbe``: a source-identity linear probe. A fixed batch of images is mixed with fixed
  masks (own generator: the training RNG is untouched); a logistic regression (sklearn) learns
  to predict each patch's source index from the post-LayerNorm encoder features (what Eq. 7's
  projector sees) on half of the mixed samples and is scored on the other half. Which image of
  a group is "source i" is arbitrary, so the index can only be read off features that carry a
  segment code: accuracy far above chance at initialisation means Eq. 7 can be solved by
  reading the code, without recognising homologous patches.
* ``homocon_floor``: the infimum ln |P(l)| of Eq. 7 for the config's masks, so the logged
  HomoCon loss can be read as a ratio to its floor (1 = sources fully separated).

TopK sampling accuracy per layer is measured by homologous attention itself (``topk_acc``).
"""
from __future__ import annotations

import numpy as np
import torch

from mixedae.model.homologous_contrastive import homologous_contrastive_floor
from mixedae.model.mixing import mixing_masks
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.sampler import SeededSample


def _masks(cfg, num_groups: int, num_mix: int, seed: int) -> torch.Tensor:
    side = cfg.img_size // cfg.patch_size
    return mixing_masks(num_groups, num_mix, cfg.group_size, (side, side),
                        cfg.mask_patch_size // cfg.patch_size,
                        generator=torch.Generator().manual_seed(seed))


def homocon_floor(cfg) -> float | None:
    """ln |P(l)| averaged over anchors for the config's masks (every mask has the same source
    sizes), or None without the homologous contrastive loss."""
    if not cfg.homo_con:
        return None
    g = cfg.group_size
    if cfg.mixing == "none":  # MAE + HomoCon: the visible patches of g images
        keep = int(cfg.num_patches * cfg.mix_ratio)
        return homologous_contrastive_floor(torch.arange(g).repeat_interleave(keep)[None])
    return homologous_contrastive_floor(_masks(cfg, 1, 1, 0)[0])


class SourceProbe:
    """Fixed held-out mixed batch + linear probe of the patches' source index.

    dataset items are (3, H, W) tensors indexed by ``(index, seed)`` (``PretrainImages``);
    ``num_images`` of them, evenly spaced (repeated if the dataset is smaller), with a fixed
    crop each.
    """

    def __init__(self, cfg, dataset, device, num_images: int = 64, seed: int = 0):
        if cfg.mixing == "none":
            raise ConfigError("the source-identity probe needs mixing (mixing='none' is MAE)")
        g = cfg.group_size
        n = max(2, num_images // g) * g
        if len(dataset) >= n:
            index = np.linspace(0, len(dataset) - 1, n).round().astype(int)
        else:  # a small dataset: its images again, with other crops
            index = np.arange(n) % len(dataset)
        seeded = SeededSample(dataset)
        self.imgs = torch.stack([seeded[(int(i), seed + k)] for k, i in enumerate(index)])
        self.imgs = self.imgs.to(device)
        num_mix = 1 if cfg.mixing == "compose" else g
        self.src = _masks(cfg, n // g, num_mix, seed + 1).to(device)
        self.num_groups = n // g

    @torch.no_grad()
    def features(self, model) -> tuple[np.ndarray, np.ndarray]:
        """Post-LN patch features (Nmix, L, D) and source ids (Nmix, L), in eval mode."""
        was_training = model.training
        model.eval()
        try:
            z, src, _, _ = model.encode_mixed(self.imgs, src=self.src)
        finally:
            model.train(was_training)
        return z[:, 1:].float().cpu().numpy(), src.flatten(0, 1).cpu().numpy()

    def __call__(self, model) -> dict:
        """{"probe_acc": held-out accuracy, "probe_chance": majority-class rate} (samples of the
        first half of the groups train the probe, the second half scores it)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        with torch.random.fork_rng(devices=[]):
            feats, src = self.features(model)
        half = feats.shape[0] * (self.num_groups // 2) // self.num_groups
        x_tr, y_tr = feats[:half].reshape(-1, feats.shape[-1]), src[:half].reshape(-1)
        x_te, y_te = feats[half:].reshape(-1, feats.shape[-1]), src[half:].reshape(-1)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
        clf.fit(x_tr, y_tr)
        chance = np.bincount(y_te).max() / len(y_te)
        return {"probe_acc": float(clf.score(x_te, y_te)), "probe_chance": float(chance)}
