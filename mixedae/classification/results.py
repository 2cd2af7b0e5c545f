"""Results of the classification evaluations: the Table 2 tables (``results.md`` /
``results.csv``), per-class accuracy / AP files, confusion-matrix and comparison plots.

Every table names its metric. The main table uses, per dataset, the metric of the protocol the
paper follows (Ericsson et al.; :mod:`mixedae.classification.specs`) -- the one Table 2 uses;
a second table lists every metric stored for every dataset, the Table 2 one marked ``*``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from mixedae.classification.specs import ORDER, SPECS
from mixedae.paper_numbers import CLS11
from mixedae.runtime.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

# Table 2 of the paper, row "MixedAE" (ViT-B/16, 1600 epochs): mixedae.paper_numbers
_TABLE2 = next(r for r in CLS11["base"] if r.method == "MixedAE" and r.epochs == 1600)
PAPER_MIXEDAE_VITB = {n: _TABLE2.values[SPECS[n].column] for n in ORDER}
PAPER_MIXEDAE_VITB_AVG = _TABLE2.values["Avg."]
PAPER_LABEL = "MixedAE ViT-B/16 1600ep (paper Table 2, copied)"

SHORT = {"top1": "top-1", "top5": "top-5", "mean_per_class": "mean per-class",
         "map11": "11-pt mAP", "map": "std. mAP"}
ALL_METRICS = ("top1", "top5", "mean_per_class", "map11", "map")


def fmt(x, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def public_eval(ev: dict) -> dict:
    """The scalar metrics of an evaluation (per-class lists and confusion matrix left out)."""
    return {k: v for k, v in ev.items() if not isinstance(v, (list, dict))}


# ---- per dataset ------------------------------------------------------------------------------
def write_per_class(out_dir: Path, classes: list[str], ev: dict, title: str) -> list[Path]:
    """``per_class.csv`` (accuracy or AP of every class), and ``confusion.csv`` +
    ``confusion.png`` (single-label) or ``per_class_ap.png`` (multi-label)."""
    out_dir = Path(out_dir)
    rows = io.StringIO()
    w = csv.writer(rows)
    if "confusion" in ev:
        cm = np.asarray(ev["confusion"], dtype=np.int64)
        w.writerow(["class", "n", "correct", "accuracy"])
        for i, c in enumerate(classes):
            w.writerow([c, int(cm[i].sum()), int(cm[i, i]), fmt(ev["per_class"][i], 4)])
        text = io.StringIO()
        csv.writer(text).writerows([[""] + list(classes)]
                                   + [[c] + cm[i].tolist() for i, c in enumerate(classes)])
        atomic_write_text(out_dir / "confusion.csv", text.getvalue())
        paths = [out_dir / "per_class.csv", out_dir / "confusion.csv",
                 _plot(out_dir / "confusion.png", _confusion_fig, cm, classes, title)]
    else:
        w.writerow(["class", "ap11", "ap"])
        for i, c in enumerate(classes):
            w.writerow([c, fmt(ev["per_class_ap11"][i], 4), fmt(ev["per_class_ap"][i], 4)])
        paths = [out_dir / "per_class.csv",
                 _plot(out_dir / "per_class_ap.png", _ap_fig, ev, classes, title)]
    atomic_write_text(out_dir / "per_class.csv", rows.getvalue())
    return [p for p in paths if p is not None]


def _plot(path: Path, draw, *a) -> Path | None:
    """Render ``draw(plt, *a)`` to ``path`` (atomically); None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: %s not drawn", path)
        return None
    fig = draw(plt, *a)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                               bbox_inches="tight"))
    plt.close(fig)
    return path


def _confusion_fig(plt, cm: np.ndarray, classes: list[str], title: str):
    n = len(classes)
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.25 * n, 16)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig


def _ap_fig(plt, ev: dict, classes: list[str], title: str):
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(classes)), 4))
    vals = [v if v is not None else 0.0 for v in ev["per_class_ap11"]]
    ax.bar(range(len(classes)), vals, color="tab:blue")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=8)
    ax.set(ylabel="AP, VOC2007 11-point (%)", ylim=(0, 100), title=title)
    return fig


# ---- tables -----------------------------------------------------------------------------------
def collect(paths) -> dict[str, dict]:
    """``{dataset: summary}`` from summary ``result.json`` files (missing ones skipped)."""
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            r = json.loads(p.read_text())
            out[r["dataset"]] = r
    return out


def write_tables(out_dir: Path, name: str, res: dict[str, dict], what: str,
                 paper_row: bool = False, note: str | None = None) -> tuple[Path, Path]:
    """results.csv / results.md for the summaries ``res`` (dataset → summary with ``metric``,
    ``test_score``, ``test_eval``; optional ``chosen_lr``, ``val_scores``, ``split_note``,
    ``notes``; ``finished: False`` with ``step`` / ``steps`` marks a partial run). The 11
    datasets go in Table 2 column order; other data (ImageNet) in rows. ``note``: a line
    under the heading (e.g. where an interrupted run ended)."""
    return write_row_tables(out_dir, name, {name: res}, what, paper_row, note)


def write_row_tables(out_dir: Path, name: str, rows: dict[str, dict[str, dict]], what: str,
                     paper_row: bool = False, note: str | None = None) -> tuple[Path, Path]:
    """:func:`write_tables` with one table row per entry of ``rows`` (row label → ``res``),
    e.g. one per k of a k-NN run; ``name`` heads the file. A partial run's score is marked
    ``†`` (CSV: the ``partial`` column names those data)."""
    out_dir = Path(out_dir)
    every = {n: r for res in rows.values() for n, r in res.items()}
    table2 = [n for n in ORDER if n in every and _in_table2(every[n])]
    others = [n for n in every if n not in table2]
    header = ["Method"] + [SPECS[n].column for n in ORDER] + ["Avg."]
    table, partial = [], {}
    for label, res in rows.items():
        have = [res[n]["test_score"] for n in table2 if n in res]
        table.append([label] + [res[n]["test_score"] if n in res and n in table2 else None
                                for n in ORDER] + [float(np.mean(have)) if have else None])
        partial[label] = [n for n in res if res[n].get("finished") is False]
    n_have = max((sum(v is not None for v in r[1:-1]) for r in table), default=0)
    if paper_row:
        table.append([PAPER_LABEL] + [PAPER_MIXEDAE_VITB[n] for n in ORDER]
                     + [PAPER_MIXEDAE_VITB_AVG])
    text = io.StringIO()
    w = csv.writer(text)
    if table2:  # wide: Table 2 columns
        w.writerow(header + ["metric per column", "partial"])
        metric_note = ";".join(f"{SPECS[n].column}={SPECS[n].metric}" for n in ORDER)
        for r in table:
            w.writerow([r[0]] + ["" if v is None else f"{v:.4f}" for v in r[1:]]
                       + [metric_note, ";".join(partial.get(r[0], []))])
    else:  # long: other data (ImageNet)
        w.writerow(["Method", "data", "metric", "score", "partial"])
        for label, res in rows.items():
            for n in others:
                if n in res:
                    w.writerow([label, n, res[n]["metric"], f"{res[n]['test_score']:.4f}",
                                "yes" if n in partial[label] else ""])
    atomic_write_text(out_dir / "results.csv", text.getvalue())
    lines = [f"# {what}: {name}", ""] + ([f"**Incomplete run: {note}.**", ""] if note else [])
    st = next((r["settings"] for r in every.values() if r.get("settings")), None)
    if st:
        lines += ["Settings: " + ", ".join(f"{k} {v}" for k, v in st.items()), ""]
    if table2:
        lines += _table2_md(header, table, n_have, partial)
    if others:
        labels = list(rows)
        cols = ["score"] if len(rows) == 1 else labels
        lines += ["| data | metric | " + " | ".join(cols) + " |", "|" + "---|" * (2 + len(cols))]
        lines += [f"| {n} | {SHORT[every[n]['metric']]} | " + " | ".join(
            _cell(rows[lb].get(n), 2) for lb in labels) + " |" for n in others]
        lines.append("")
    for label, res in rows.items():
        sub = f" ({label})" if len(rows) > 1 else ""
        lines += _all_metrics_md(res, sub) + _details_md(res, sub)
    lines += [f"Note: {x}" for x in dict.fromkeys(x for r in every.values()
                                                   for x in r.get("notes", []))]
    marked = [f"{n}: step {r.get('step')} of {r.get('steps')}" for res in rows.values()
              for n, r in res.items() if r.get("finished") is False]
    if marked:
        lines += ["", "† partial run, not a result of the protocol: stopped early "
                  f"(--max-steps or interrupted) at {'; '.join(dict.fromkeys(marked))}; rerun "
                  "the same command to finish it."]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
    return out_dir / "results.csv", out_dir / "results.md"


def _cell(summary: dict | None, digits: int = 1) -> str:
    """A score cell: the protocol metric, ``†`` for a partial run."""
    if summary is None:
        return fmt(None)
    return fmt(summary["test_score"], digits) + ("†" if summary.get("finished") is False else "")


def _in_table2(summary: dict) -> bool:
    """One of the 11 datasets read by their loader (not ImageFolder data given by --data)."""
    return summary["dataset"] in SPECS and summary.get("source") != "data-dir"


def _table2_md(header: list[str], rows: list[list], n_have: int,
               partial: dict[str, list[str]]) -> list[str]:
    metric_row = ["metric"] + [SHORT[SPECS[n].metric] for n in ORDER] + [""]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
           "| " + " | ".join(metric_row) + " |"]
    for r in rows:
        marks = ["†" if n in partial.get(r[0], ()) else "" for n in ORDER]
        out.append("| " + " | ".join([r[0]] + [fmt(v) + m for v, m in zip(r[1:-1], marks)]
                                     + [fmt(r[-1]) + ("†" if any(marks) else "")]) + " |")
    out += ["", "Per column the protocol's metric (Ericsson et al., followed by the paper; this "
            "is the metric of Table 2): mean per-class accuracy for Aircraft, Caltech, Flowers, "
            "Pets; VOC2007 devkit 11-point mAP for VOC; top-1 accuracy otherwise (%). "
            f"Avg. over {n_have}/{len(ORDER)} datasets"
            + ("." if n_have == len(ORDER) else " (incomplete: not comparable to the paper's "
               "average).")]
    if any(r[0] == PAPER_LABEL for r in rows):
        out.append(f"The row '{PAPER_LABEL}' is copied from the paper, not measured here.")
    return out + [""]


def _all_metrics_md(res: dict[str, dict], sub: str = "") -> list[str]:
    part = any(r.get("finished") is False for r in res.values())
    out = [f"## Every metric{sub} (%; * = the protocol metric, the one Table 2 uses"
           + ("; † = partial run)" if part else ")"), "",
           "| data | " + " | ".join(SHORT[m] for m in ALL_METRICS) + " | n test |",
           "|" + "---|" * (len(ALL_METRICS) + 2)]
    for n, r in sorted(res.items(), key=lambda kv: _order(kv[0])):
        ev = r["test_eval"]
        cells = [fmt(ev.get(m), 2) + ("*" if m == r["metric"] else "") for m in ALL_METRICS]
        mark = "†" if r.get("finished") is False else ""
        out.append(f"| {n}{mark} | " + " | ".join(cells) + f" | {ev.get('n', '')} |")
    return out + [""]


def _details_md(res: dict[str, dict], sub: str = "") -> list[str]:
    lrs = sorted({float(k[2:]) for r in res.values() for k in r.get("val_scores", {})})
    out = [f"## Runs{sub}", ""]
    if lrs:
        out += ["| data | chosen lr | " + " | ".join(f"val lr{x:g}" for x in lrs)
                + " | test | split |", "|" + "---|" * (4 + len(lrs))]
    else:
        out += ["| data | test | split |", "|---|---|---|"]
    for n, r in sorted(res.items(), key=lambda kv: _order(kv[0])):
        test = f"{_cell(r, 2)} ({SHORT[r['metric']]})"
        if lrs:
            vs = [r.get("val_scores", {}).get(f"lr{x:g}") for x in lrs]
            cells = ["diverged" if f"lr{x:g}" in r.get("diverged", ()) else fmt(v, 2)
                     for x, v in zip(lrs, vs)]
            out.append(f"| {n} | {r.get('chosen_lr', 0):g} | " + " | ".join(cells) + f" | {test} | {r['split_note']}; "
                       f"lr search on: {r.get('val_split', '?')} |")
        else:
            out.append(f"| {n} | {test} | {r.get('split_note', '')} |")
    return out + [""]


def _order(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def plot_vs_paper(out_dir: Path, name: str, res: dict[str, dict]) -> Path | None:
    """``results.png``: this run's Table 2 scores beside the paper's MixedAE ViT-B row."""
    return _plot(Path(out_dir) / "results.png", _bars_fig, name, res)


def _bars_fig(plt, name: str, res: dict[str, dict]):
    x = np.arange(len(ORDER))
    ours = [res[n]["test_score"] if n in res else np.nan for n in ORDER]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    bars = ax.bar(x - 0.2, ours, 0.4, label=f"{name} (this run)", color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.bar(x + 0.2, [PAPER_MIXEDAE_VITB[n] for n in ORDER], 0.4, label=PAPER_LABEL,
           color="tab:gray")
    ax.set_xticks(x, [f"{SPECS[n].column}\n{SHORT[SPECS[n].metric].replace(' per-', '/')}"
                      for n in ORDER], fontsize=8)
    ax.set(ylabel="score (%)", ylim=(0, 100),
           title="Table 2 datasets, protocol metric per dataset (paper numbers copied from the "
                 "paper; missing bars: not run)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    st = next((r["settings"] for r in res.values() if r.get("settings")), {})
    shape = (st.get("model"), st.get("patch_size"), st.get("img_size"))
    if shape != ("base", 16, 224):  # on the figure itself, not only in results.md
        what = (f"this run is ViT-{shape[0]}/{shape[1]} at {shape[2]} px" if st else
                "this run's model is not recorded")
        ax.text(0.5, 0.93, f"NOT COMPARABLE: {what}; the paper's row is ViT-B/16 at 224 px "
                f"after 1600 epochs", transform=ax.transAxes, ha="center", va="top",
                fontsize=10, color="tab:red", weight="bold",
                bbox=dict(facecolor="white", edgecolor="tab:red"))
    return fig


def save_dataset_result(ds_dir: Path, data, ev: dict, name: str, **extra) -> dict:
    """A dataset's summary (protocol metric + every metric) in ``ds_dir/result.json`` and its
    per-class files; returns the summary (call on rank 0)."""
    summary = {"dataset": data.name, "column": SPECS[data.name].column if data.name in SPECS
               else data.name, "metric": data.metric, "test_score": ev[data.metric],
               "test_eval": public_eval(ev), "n_train": len(data.train_targets),
               "n_test": len(data.test_targets), "split_note": data.split_note,
               "notes": data.notes, "source": data.source, "name": name, **extra}
    write_per_class(ds_dir, data.classes, ev, f"{data.name} test ({name})")
    atomic_write_text(Path(ds_dir) / "result.json", json.dumps(summary, indent=1))
    return summary
