"""Pretraining curves from ``log.jsonl``: losses, HomoCon against its floor, lr, img/s, any
other logged scalar (e.g. ``probe_acc``), and the TopK sampling accuracy per layer over
training in the style of Fig. 6a (accuracy vs layer) and Fig. 6b (final layer vs training).

``topk_acc[i]`` of a log record belongs to encoder block ``num_global_layers + i`` (0-based, as
tensorboard's ``topk_acc/layer_{i}``); the figures number layers from 1 like the paper.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mixedae.report.collect import PretrainRun, finite

KNOWN = {"step", "epoch", "loss", "loss_recon", "loss_homocon", "lr", "topk_acc", "img_per_s",
         "homocon_floor"}


def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def homocon_floor(run: PretrainRun) -> float | None:
    """Eq. 7's floor for the run's config (``mixedae.pretrain.probe.homocon_floor``, the value
    the engine logs); None without HomoCon or a readable config."""
    from mixedae.pretrain.probe import homocon_floor as floor
    cfg = run.pretrain_config()
    return floor(cfg) if cfg is not None else None


def topk_chance(cfg: dict | None) -> float | None:
    """Expected TopK accuracy of a random key choice: Σ_sources (s/L)²."""
    if not cfg or cfg.get("mixing") == "none":
        return None
    g = round(1 / cfg["mix_ratio"])
    blocks = (cfg["img_size"] // cfg["mask_patch_size"]) ** 2
    q, rem = divmod(blocks, g)
    return sum(((q + (i < rem)) / blocks) ** 2 for i in range(g))


def series(records: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, list):
            v = float(np.mean(v)) if v and all(finite(a) for a in v) else None
        if finite(v):
            xs.append(r["step"]), ys.append(float(v))
    return xs, ys


def extra_keys(records: list[dict]) -> list[str]:
    """Numeric keys another part of the project may add (``probe_acc`` ...), in log order."""
    keys = []
    for r in records:
        for k, v in r.items():
            if k not in KNOWN and k not in keys and (finite(v) or (
                    isinstance(v, list) and v and all(finite(a) for a in v))):
                keys.append(k)
    return keys


def plot_curves(run: PretrainRun, path: Path, baseline: PretrainRun | None = None) :
    """Loss / reconstruction, HomoCon vs floor, lr, img/s with its dips marked (+ other
    scalars); baseline dashed. Returns the (closed) figure."""
    pyplot = plt()
    extras = extra_keys(run.records)
    n = 4 + (1 if extras else 0)
    fig, axes = pyplot.subplots(1, n, figsize=(3.6 * n, 3.2))
    runs = [(run, "-", run.name)] + ([(baseline, "--", baseline.name)] if baseline else [])
    color = {"loss": "C0", "loss_recon": "C1", "lr": "C0", "img_per_s": "C0"}
    for r, ls, name in runs:  # same colour per quantity; the baseline dashed
        for key, ax in (("loss", axes[0]), ("loss_recon", axes[0]), ("lr", axes[2]),
                        ("img_per_s", axes[3])):
            ax.plot(*series(r.records, key), ls, color=color[key], lw=1.2,
                    label=f"{key} ({name})")
        xs, ys = series(r.records, "loss_homocon")
        if (r.config or {}).get("homo_con") and xs:
            axes[1].plot(xs, ys, ls, color="C2", lw=1.2, label=f"HomoCon ({name})")
            fx, fy = series(r.records, "homocon_floor")
            floor = homocon_floor(r)
            if fx:
                axes[1].plot(fx, fy, ":", color="k", label="floor (logged)")
            elif floor is not None:
                axes[1].axhline(floor, ls=":", color="k",
                                label=f"floor ln(#pos) = {floor:.2f}")
    slow = throughput_dips(run.records)
    if slow[0]:
        axes[3].plot(*slow, "x", color="C3", ms=6, label=f"{len(slow[0])} step(s) below half "
                     f"the median (machine load, evaluation or I/O: not the model)")
    for k in extras:
        axes[4].plot(*series(run.records, k), lw=1.2, label=k)
    titles = ["loss and L_recon (Eq. 4, 8)", "L_HomoCon (Eq. 7) vs its floor", "learning rate",
              "throughput (img/s)", "other logged values"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
    return fig


def throughput_dips(records: list[dict], frac: float = 0.5) -> tuple[list, list]:
    """Logged steps whose img/s is below ``frac`` × the run's median: a shared machine's load,
    an evaluation or a data stall rather than the model's speed."""
    xs, ys = series(records, "img_per_s")
    if len(ys) < 3:
        return [], []
    med = float(np.median(ys))
    low = [(x, y) for x, y in zip(xs, ys) if y < frac * med]
    return [x for x, _ in low], [y for _, y in low]


def topk_matrix(run: PretrainRun) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, acc[steps, layers]) from the log; None if no TopK accuracy was logged."""
    recs = [r for r in run.records if isinstance(r.get("topk_acc"), list) and r["topk_acc"]]
    if not recs:
        return None
    width = max(len(r["topk_acc"]) for r in recs)
    recs = [r for r in recs if len(r["topk_acc"]) == width]
    return (np.array([r["step"] for r in recs]),
            np.array([r["topk_acc"] for r in recs], dtype=float))


def window_mean(acc: np.ndarray, upto: int, frac: float = 0.1) -> np.ndarray:
    """Mean per layer over the last ``frac`` of the records before index ``upto``."""
    lo = max(0, upto - max(1, int(round(frac * upto))))
    return np.nanmean(acc[lo:upto], axis=0)


def plot_topk(run: PretrainRun, path: Path, baseline: PretrainRun | None = None) -> dict:
    """Fig. 6a/6b style; returns the numbers shown (final per-layer means, chance)."""
    pyplot = plt()
    data = topk_matrix(run)
    first = int((run.config or {}).get("num_global_layers", 0)) + 1
    steps, acc = data
    layers = np.arange(first, first + acc.shape[1])
    chance = topk_chance(run.config)
    fig, (a, b) = pyplot.subplots(1, 2, figsize=(11, 3.8))
    cmap = pyplot.get_cmap("viridis")
    marks = sorted({max(1, int(round(f * len(steps)))) for f in (0.25, 0.5, 0.75, 1.0)})
    for j, m in enumerate(marks):
        a.plot(layers, window_mean(acc, m), "o-", ms=3, color=cmap(j / max(1, len(marks) - 1)),
               label=f"step {steps[m - 1]}")
    a.set_xticks(layers)
    a.set_xlabel("layer (1 = first block)"), a.set_ylabel("TopK sampling accuracy")
    a.set_title("(a) accuracy per layer (mean over the last 10% of records)", fontsize=9)
    b.plot(steps, acc[:, -1], color="tab:orange", lw=1.5, label=f"layer {layers[-1]} ({run.name})")
    b.plot(steps, acc.mean(1), color="tab:orange", lw=0.8, alpha=0.5, label="mean over layers")
    if baseline is not None and topk_matrix(baseline) is not None:
        bs, ba = topk_matrix(baseline)
        b.plot(bs, ba[:, -1], color="tab:green", lw=1.5, label=f"final layer ({baseline.name})")
        bfirst = int((baseline.config or {}).get("num_global_layers", 0)) + 1
        a.plot(np.arange(bfirst, bfirst + ba.shape[1]), window_mean(ba, len(bs)), "s--",
               color="tab:green", ms=3, label=f"{baseline.name}, step {bs[-1]}")
    b.set_xlabel("step"), b.set_title("(b) final layer over training", fontsize=9)
    for ax in (a, b):
        if chance is not None:
            ax.axhline(chance, ls=":", color="gray", label=f"chance {chance:.2f}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
    return {"layers": layers.tolist(), "final": window_mean(acc, len(steps)).tolist(),
            "chance": chance, "steps": int(steps[-1])}
