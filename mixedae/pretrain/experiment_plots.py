"""Table and Fig. 6-style plots of ``mixedae experiment fig6`` (rows from ``experiment.summarise``).

Colours follow Fig. 6: orange = MixedAE (with HomoCon), green = HomoAtt-only; a dashed line is
the literal-Eq. 6 cls mode (``homo_cls='topk'``); one panel per ``seg_embed_mode``.
"""
from __future__ import annotations

from pathlib import Path

COLORS = {"MixedAE": "tab:orange", "HomoAtt-only": "tab:green"}
STYLES = {"always_visible": "-", "topk": "--"}


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_table(rows: list[dict], path: Path) -> None:
    """Markdown table: one line per run."""
    head = ("| method | seg_embed_mode | homo_cls | steps | probe init | probe end | "
            "HomoCon/floor | TopK acc per layer (last 10 %) | TopK mean | TopK 2nd half | "
            "TopK final | recon |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        layers = " ".join(f"{a:.2f}" for a in r["topk_acc"])
        lines.append(f"| {r['method']} | {r['seg_embed_mode']} | {r['homo_cls']} | {r['steps']} "
                     f"| {_fmt(r['probe_init'])} | {_fmt(r['probe_end'])} "
                     f"| {_fmt(r['homocon_ratio'])} | {layers} | {_fmt(r['topk_mean'])} "
                     f"| {_fmt(r['topk_late'])} | {_fmt(r['topk_final'])} | {_fmt(r['recon'])} |")
    chance = rows[0]["chance"] if rows else 0.25
    probe_chance = next((r["probe_chance"] for r in rows if r["probe_chance"]), None)
    lines.append(f"\nchance: TopK accuracy ≈ {chance:.2f} (1/g), probe {_fmt(probe_chance)} "
                 "(majority source on the held-out half); layers are encoder blocks "
                 f"{rows[0]['first_topk_layer'] + 1 if rows else 2}.. (1-based, as Fig. 6a).")
    path.write_text("\n".join(lines) + "\n")


def _panels(rows: list[dict], title: str, ylabel: str, xlabel: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = list(dict.fromkeys(r["seg_embed_mode"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(3.4 * len(modes), 3.0), squeeze=False,
                             sharey=True)
    panels = {m: ax for m, ax in zip(modes, axes[0])}
    from matplotlib.ticker import MaxNLocator
    for m, ax in panels.items():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"seg_embed_mode={m}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig, panels


def _finish(fig, panels, path: Path, chance: float | None) -> None:
    for ax in panels.values():
        if chance is not None:
            ax.axhline(chance, color="gray", ls=":", lw=1, label="chance")
        ax.set_ylim(0, 1.02)
    labels = {}  # one legend for all panels (a cls mode may appear in some panels only)
    for ax in panels.values():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    next(iter(panels.values())).legend(labels.values(), labels.keys(), fontsize=6,
                                       loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt
    plt.close(fig)


def _label(r: dict) -> str:
    return f"{r['method']}" + (" (cls topk)" if r["homo_cls"] == "topk" else "")


def plot_fig6a(rows: list[dict], path: Path) -> None:
    """TopK accuracy per layer (mean over the last 10 % of steps), as Fig. 6a."""
    fig, panels = _panels(rows, "TopK sampling accuracy per layer (Fig. 6a)", "accuracy",
                          "layer")
    for r in rows:
        first = r["first_topk_layer"] + 1  # 1-based index of the first TopK layer
        x = list(range(first, first + len(r["topk_acc"])))
        panels[r["seg_embed_mode"]].plot(x, r["topk_acc"], marker="o", ms=3,
                                         color=COLORS[r["method"]], ls=STYLES[r["homo_cls"]],
                                         label=_label(r))
    _finish(fig, panels, path, rows[0]["chance"] if rows else None)


def plot_fig6b(rows: list[dict], path: Path) -> None:
    """Final-layer TopK accuracy over training, with and without HomoCon, as Fig. 6b."""
    fig, panels = _panels(rows, "final-layer TopK sampling accuracy (Fig. 6b)", "accuracy",
                          "step")
    for r in rows:
        steps, acc = zip(*r["curve"]) if r["curve"] else ((), ())
        panels[r["seg_embed_mode"]].plot(steps, acc, color=COLORS[r["method"]],
                                         ls=STYLES[r["homo_cls"]], lw=1.2, label=_label(r))
    _finish(fig, panels, path, rows[0]["chance"] if rows else None)


def plot_probe(rows: list[dict], path: Path) -> None:
    """Source-identity probe accuracy over training (held-out mixed batch)."""
    fig, panels = _panels(rows, "source-identity linear probe on post-LN features", "accuracy",
                          "step")
    for r in rows:
        if r["probe_curve"]:
            steps, acc = zip(*r["probe_curve"])
            panels[r["seg_embed_mode"]].plot(steps, acc, marker="o", ms=3,
                                             color=COLORS[r["method"]],
                                             ls=STYLES[r["homo_cls"]], label=_label(r))
    chance = next((r["probe_chance"] for r in rows if r["probe_chance"]), None)
    _finish(fig, panels, path, chance)
