"""Attention maps of a pretrained run, computed from its stored ``model.safetensors`` +
``config.json`` (the model is rebuilt as ``MixedAutoencoder(cfg.model_config())``).

* ``cls_attention`` (Fig. 5 / 7): the last block's attention of the [CLS] query over the patch
  keys, mean over heads, with the encoder used as a plain ViT (no mixing, no segment
  embedding, global attention) — how the transfer tasks see it;
* ``patch_neighbourhood``: for one query patch of a mixed sample (as in pretraining: segment
  embeddings, the run's own attention), the keys the last block's homologous attention keeps
  (Eq. 6: fraction of heads whose TopK selects each key), its attention weights (mean over
  heads) and the query's true homologous patches. Runs without mixing (MAE) get the global
  attention row of the query patch on the plain image.

Nothing is rebuilt here: a forward hook on the last block's attention reads what the model
passes it (its input, ``qk_embed``, the ``HomologousContext`` or ``attn_mask``), and q, k and the
selection come from the model's own code (``Attention.heads``, ``HomologousContext.attn_bias``),
so every choice of the run (``homo_cls``, ``seg_embed_mode``, relative position bias) is drawn as
trained.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from mixedae.report.collect import PretrainRun


class ModelUnavailable(Exception):
    """The run cannot be rebuilt (no weights, unknown config keys, mismatching weights)."""


def load_model(run: PretrainRun):
    """The run's pretraining model in eval mode on the CPU, and its config."""
    from mixedae.model.attention.homologous import impl_unavailable
    from mixedae.model.mixed_autoencoder import MixedAutoencoder
    from mixedae.pretrain.config import PretrainConfig
    from mixedae.runtime.checkpoint import load_model_state
    from mixedae.runtime.weights import checkpoint_config, read_weights
    from mixedae.runtime.errors import MixedAEError
    if run.weights is None:
        raise ModelUnavailable(f"no model.safetensors in {run.path} (no checkpoint saved yet)")
    try:
        state = read_weights(run.weights)[0]
        cfg = PretrainConfig.from_dict(run.config or checkpoint_config(run.weights))
        if impl_unavailable(cfg.attn_impl, torch.device("cpu")):  # a GPU run's Triton kernels:
            cfg = cfg.replace(attn_impl="sdpa")  # the same Eq. 6 (selection up to ties)
        model = MixedAutoencoder(cfg.model_config())
        load_model_state(model, state, source=str(run.weights))
    except (MixedAEError, ValueError, OSError, TypeError) as e:
        raise ModelUnavailable(f"cannot rebuild the model of {run.path}: {e}") from e
    return model.eval(), cfg


@contextmanager
def last_attention_inputs(encoder):
    """Collects (x, kwargs) of every call of the last block's attention module."""
    out = []
    handle = encoder.blocks[-1].attn.register_forward_hook(
        lambda m, args, kwargs, o: out.append((args[0], kwargs)), with_kwargs=True)
    try:
        yield out
    finally:
        handle.remove()


@torch.no_grad()
def last_block_attention(model, imgs: torch.Tensor, mixed: bool, seed: int = 0) -> dict:
    """The last block's attention probabilities exactly as the model computes them.

    ``mixed=False``: the encoder as a plain ViT on ``imgs`` (global attention).
    ``mixed=True`` (runs with mixing): the pretraining forward on mixed samples of ``imgs``
    (masks drawn with ``seed``): segment embeddings and the run's attention (TopK bias of
    Eq. 6 or the homologous mask). Returns ``probs`` (S, H, N, N), ``kept`` (S, H, N, N) the
    keys each query may attend, ``v`` (S, H, N, d), the shown ``image`` (S, 3, H, W)
    normalised, ``src`` (S, L) or None, ``topk`` (bool: the block used homologous TopK)."""
    enc = model.encoder
    with torch.random.fork_rng(), last_attention_inputs(enc) as got:
        torch.manual_seed(seed)
        if mixed:
            _, src, image, _ = model.encode_mixed(imgs)
            src = src.flatten(0, 1)
        else:
            x, grid = enc.embed(imgs)
            enc.forward_blocks(x, grid=grid)
            image, src = imgs, None
    x, kw = got[-1]
    q, k, v = (t.float() for t in enc.blocks[-1].attn.heads(x, kw.get("qk_embed")))
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    homo, mask = kw.get("homo"), kw.get("attn_mask")
    if homo is not None:
        logits = logits + homo.attn_bias(q, k)[0].float()
    elif mask is not None and mask.dtype == torch.bool:  # True = may attend
        logits = logits.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        logits = logits + mask.float()
    return dict(probs=logits.softmax(-1), kept=torch.isfinite(logits), v=v, image=image,
                src=src, topk=homo is not None)


def cls_attention(model, imgs: torch.Tensor) -> torch.Tensor:
    """(B, h, w) [CLS]→patch attention of the last block, mean over heads (plain ViT)."""
    probs = last_block_attention(model, imgs, mixed=False)["probs"]
    return probs[:, :, 0, 1:].mean(1).view(imgs.shape[0], *model.encoder.grid_size)


def patch_neighbourhood(model, imgs: torch.Tensor, query: int, seed: int = 0) -> dict:
    """The last block's view of patch ``query`` (row-major patch index) in mixed samples
    (plain images for runs without mixing).

    Returns over the patches of each shown sample: ``attn`` (S, L) mean-head attention of the
    query, ``selected`` (S, L) fraction of heads whose TopK keeps each key (None without
    TopK), ``same`` (S, L) true homologous patches (None without mixing), ``precision`` (S,)
    share of the kept keys that are homologous (None without TopK), and ``image``."""
    L = model.encoder.num_patches
    if not 0 <= query < L:
        raise ValueError(f"--query-patch {query} outside the {L} patches of the model")
    att = last_block_attention(model, imgs, model.cfg.mixing != "none", seed)
    row, src = att["probs"][:, :, 1 + query, 1:], att["src"]
    selected = att["kept"][:, :, 1 + query, 1:].float().mean(1) if att["topk"] else None
    same = None if src is None else src == src[:, query:query + 1]
    precision = None
    if selected is not None:
        precision = (selected * same).sum(-1) / selected.sum(-1)
    return dict(image=att["image"], attn=row.mean(1), selected=selected, same=same,
                precision=precision, grid=tuple(model.encoder.grid_size),
                patch=model.cfg.patch_size, query=query)


def load_images(cfg, folder: str | Path | None, count: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` photos, resized and center-cropped to the run's image size, normalised.

    From ``folder`` (evenly spaced over its sorted images) or, by default, the photos that
    ship with scikit-image / scikit-learn (those the demo trains on)."""
    from mixedae.pretrain.data import eval_view, list_images, packaged_photos
    from mixedae.runtime.images import load_rgb
    if folder is None:
        photos = packaged_photos()
        names = list(photos)[:count]
        pils = [photos[k] for k in names]
    else:
        files = list_images(folder)  # ConfigError naming the folder if it has no image
        pick = [Path(files[round(i * (len(files) - 1) / max(1, count - 1))]) for i in range(count)]
        names, pils = [p.stem for p in pick], [load_rgb(p) for p in pick]
    view = eval_view(cfg.img_size)
    names = [names[i % len(names)] for i in range(count)]
    return torch.stack([view(pils[i % len(pils)]) for i in range(count)]), names
