"""Figures of the rebuilt model: reconstructions of mixed samples (as the demo draws them),
[CLS] attention maps (Fig. 5 / 7 style) and a query patch's homologous neighbourhood, for the
run and, side by side, a baseline run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mixedae.report.curves import plt


def to01(imgs: torch.Tensor) -> np.ndarray:
    """Normalised (B, 3, H, W) → (B, H, W, 3) in [0, 1]."""
    mean = imgs.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = imgs.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (imgs * std + mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def upsample(grid_values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) patch values → (H, W) nearest-neighbour image (patches stay visible)."""
    return F.interpolate(grid_values[None, None].float(), size=size,
                         mode="nearest")[0, 0].numpy()


def _bare(ax) -> None:
    ax.set_xticks([]), ax.set_yticks([])


def plot_reconstructions(vis: dict, path: Path, names: list[str]) -> None:
    """The demo's figure. Columns: the sources of each shown group; rows: original / mixed
    input / reconstruction."""
    pyplot = plt()
    orig, rec, mixed, g = vis["original"], vis["reconstruction"], vis["mixed"], vis["group_size"]
    n = orig.shape[0]
    mix_of = (lambda i: i) if mixed.shape[0] == n else (lambda i: i // g)
    rows = [("original", lambda i: orig[i]), ("mixed input", lambda i: mixed[mix_of(i)]),
            ("reconstruction", lambda i: rec[i])]
    fig, axes = pyplot.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    for r, (label, get) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(get(i).permute(1, 2, 0).cpu().numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
            if r == 0:
                ax.set_title(f"{names[i]}\n(group {i // g})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def plot_cls_attention(images: torch.Tensor, names: list[str], maps: list[tuple[str, torch.Tensor]],
                       path: Path):
    """Row 0: the images; one row per run: [CLS]→patch attention (mean over heads), each map
    scaled to its own maximum, with a colour bar per row. Returns the (closed) figure."""
    pyplot = plt()
    pics = to01(images)
    n, rows = len(pics), 1 + len(maps)
    fig, axes = pyplot.subplots(rows, n, figsize=(1.5 * n + 0.8, 1.55 * rows), squeeze=False,
                                layout="constrained")
    size = pics.shape[1:3]
    shown = {}
    for i in range(n):
        axes[0, i].imshow(pics[i])
        axes[0, i].set_title(names[i][:14], fontsize=7)
        for r, (label, attn) in enumerate(maps, 1):
            a = upsample(attn[i] / attn[i].max(), size)
            axes[r, i].imshow(pics[i].mean(-1), cmap="gray", alpha=0.5)
            shown[r] = axes[r, i].imshow(a, cmap="inferno", alpha=0.75, vmin=0, vmax=1)
        for r in range(rows):
            _bare(axes[r, i])
    axes[0, 0].set_ylabel("image", fontsize=8)
    for r, (label, _) in enumerate(maps, 1):
        axes[r, 0].set_ylabel(label, fontsize=8)
        bar = fig.colorbar(shown[r], ax=axes[r, :].tolist(), fraction=0.02, pad=0.01)
        bar.set_label("attention / map max", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
    return fig


def _mark(ax, query: int, grid: tuple[int, int], patch: int) -> None:
    import matplotlib.patches as mpatches
    y, x = divmod(query, grid[1])
    ax.add_patch(mpatches.Rectangle((x * patch - 0.5, y * patch - 0.5), patch, patch,
                                    fill=False, ec="red", lw=1.5))


def _panel(ax, pic, values, size, query, nb, cmap, title, vmax=None, label=None) -> None:
    if cmap is not None and values is None:  # this run has no such map
        ax.imshow(np.full((*size, 3), 0.95))
        ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=7, color="#5a6478",
                transform=ax.transAxes)
        return _bare(ax)
    ax.imshow(pic.mean(-1) if values is not None else pic, cmap="gray" if values is not None
              else None, alpha=0.45 if values is not None else 1.0)
    if values is not None:
        im = ax.imshow(upsample(values.view(nb["grid"]), size), cmap=cmap, alpha=0.75, vmin=0,
                       vmax=vmax if vmax is not None else float(values.max()) or 1.0)
        bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(label, fontsize=6)
        bar.ax.tick_params(labelsize=6)
    _mark(ax, query, nb["grid"], nb["patch"])
    ax.set_title(title, fontsize=7)
    _bare(ax)


def plot_neighbourhoods(rows: list[tuple[str, dict]], path: Path, samples: int = 2):
    """Per run and sample: input with the query (red), its true homologous patches, the keys
    the last block's TopK keeps (fraction of heads) and the query's attention (mean of heads),
    each map with its colour bar. Returns the (closed) figure."""
    pyplot = plt()
    lines = [(label, nb, s) for label, nb in rows for s in range(min(samples, len(nb["image"])))]
    fig, axes = pyplot.subplots(len(lines), 4, figsize=(8.6, 2.15 * len(lines)), squeeze=False,
                                layout="constrained")
    for r, (label, nb, s) in enumerate(lines):
        pic = to01(nb["image"][s:s + 1])[0]
        size, q = pic.shape[:2], nb["query"]
        same = None if nb["same"] is None else nb["same"][s].float()
        sel = None if nb["selected"] is None else nb["selected"][s]
        prec = ("" if nb["precision"] is None else
                f" — {100 * float(nb['precision'][s]):.0f}% homologous")
        _panel(axes[r, 0], pic, None, size, q, nb, None, "mixed input" if same is not None
               else "input (no mixing)")
        _panel(axes[r, 1], pic, same, size, q, nb, "Greens", "true homologous patches"
               if same is not None else "n/a (no mixing)", 1.0, "1 = same source")
        _panel(axes[r, 2], pic, sel, size, q, nb, "Blues", ("TopK keys kept" + prec)
               if sel is not None else "n/a (no TopK)", 1.0, "fraction of heads")
        _panel(axes[r, 3], pic, nb["attn"][s], size, q, nb, "inferno", "attention of the query",
               label="attention weight")
        axes[r, 0].set_ylabel(f"{label}\nsample {s}", fontsize=7)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
    return fig
