"""Assemble the report of a run: collect, draw, render (``write_report``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mixedae.report import attention, curves, maps
from mixedae.report.collect import PretrainRun, find_transfers, load_run
from mixedae.report.document import Figure, Report, Section, Table, Text, write
from mixedae.report.transfers import fmt, transfer_sections
from mixedae.runtime.errors import ConfigError


@dataclass
class ReportOptions:
    out: Path
    baseline: Path | None = None
    images: Path | None = None     # default: the photos shipped with scikit-image/-learn
    num_images: int = 8
    query: int | None = None       # query patch of the neighbourhood maps (default: centre)
    seed: int = 0
    name: str | None = None        # the run's name in the report (default: folder name)


def _last(run: PretrainRun, key: str):
    xs, ys = curves.series(run.records, key)
    return ys[-1] if ys else None


def curves_section(run: PretrainRun, base: PretrainRun | None, out: Path) -> Section:
    sec = Section("Pretraining curves")
    if not run.records:
        sec.status = "missing"
        return sec.add(Text(f"{run.path / 'log.jsonl'} is missing or empty: no step was "
                            f"logged yet", "missing"))
    curves.plot_curves(run, out / "curves.png", base)
    floor = _last(run, "homocon_floor") or curves.homocon_floor(run)
    homo = _last(run, "loss_homocon")
    keys = (["loss", "loss_recon", "loss_homocon", "lr", "img_per_s"]
            + curves.extra_keys(run.records))
    rows = [[k, f"{v:.4g}"] for k, v in ((k, _last(run, k)) for k in keys) if v is not None]
    if floor is not None and homo is not None:
        rows.insert(3, ["HomoCon / floor", f"{homo / floor:.3f} (floor {floor:.3f})"])
    caption = ("losses, HomoCon against its floor ln(#positives), learning rate and throughput "
               "per logged step (× marks steps below half the median img/s: machine load, "
               "evaluation or I/O)" + (f"; dashed: baseline {base.name}" if base else ""))
    sec.add(Figure("curves.png", caption),
            Table(["value at the last logged step", f"step {run.records[-1]['step']}"], rows))
    return sec


def topk_section(run: PretrainRun, base: PretrainRun | None, out: Path) -> Section:
    sec = Section("TopK sampling accuracy (Fig. 6)")
    if curves.topk_matrix(run) is None:
        sec.status = "missing"
        why = ("the run has no homologous TopK attention" if (run.config or {}).get(
            "attention") != "topk" else "no TopK accuracy was logged yet")
        return sec.add(Text(why, "missing"))
    shown = curves.plot_topk(run, out / "topk.png", base)
    sec.add(Figure("topk.png", "fraction of the K keys kept by homologous attention that come "
                   "from the query's own source image: (a) per layer at four points of "
                   "training, (b) the final layer over training (paper: ~70-80 % with "
                   "HomoCon, < 40 % without)"),
            Table(["layer"] + [str(i) for i in shown["layers"]],
                  [[f"step {shown['steps']}"] + [f"{a:.3f}" for a in shown["final"]]],
                  caption=f"mean over the last 10 % of records; chance "
                          f"{fmt(100 * (shown['chance'] or float('nan')))} %"))
    return sec


def model_sections(run: PretrainRun, base: PretrainRun | None, opts: ReportOptions) -> list:
    """Reconstructions and attention maps (need the weights of the run)."""
    rec, cls, nb = (Section("Reconstructions of mixed samples"),
                    Section("Attention maps (Fig. 5 / 7)"),
                    Section("Homologous-attention neighbourhood of a patch"))
    try:
        model, cfg = attention.load_model(run)
    except attention.ModelUnavailable as e:
        for s in (rec, cls, nb):
            s.status = "missing"
            s.add(Text(str(e), "missing"))
        return [rec, cls, nb]
    models = [(run.name, model)]
    if base is not None:
        try:
            bmodel, bcfg = attention.load_model(base)
            if (bcfg.img_size, bcfg.patch_size) != (cfg.img_size, cfg.patch_size):
                raise attention.ModelUnavailable(
                    f"{base.path} works at {bcfg.img_size} px / patch {bcfg.patch_size}, the "
                    f"run at {cfg.img_size} / {cfg.patch_size}: not shown side by side")
            models.append((f"{base.name} (baseline)", bmodel))
        except attention.ModelUnavailable as e:
            for s in (cls, nb):
                s.status = "partial"
                s.add(Text(f"baseline: {e}", "missing"))
    groups = max(2 * m.cfg.group_size for _, m in models)  # two mixed samples per run
    imgs, names = attention.load_images(cfg, opts.images, max(opts.num_images, groups))
    _reconstructions(rec, models, imgs, names, opts)
    shown = imgs[:opts.num_images]
    cls_maps = [(label, attention.cls_attention(m, shown)) for label, m in models]
    maps.plot_cls_attention(shown, names[:opts.num_images], cls_maps,
                            opts.out / "attention_cls.png")
    cls.add(Figure("attention_cls.png", "[CLS] query over the patch keys in the last block, "
                   "mean over heads, the encoder used as a plain ViT (as in transfer); each map "
                   "scaled to its own maximum, brighter = more attention"))
    grid = model.encoder.grid_size
    query = opts.query if opts.query is not None else (grid[0] // 2) * grid[1] + grid[1] // 2
    rows = [(label, attention.patch_neighbourhood(m, imgs[:2 * m.cfg.group_size], query,
                                                  opts.seed)) for label, m in models]
    maps.plot_neighbourhoods(rows, opts.out / "attention_patch.png")
    nb.add(Figure("attention_patch.png", f"query patch {query} (red square) in the last block:"
                  " its true homologous patches, the keys TopK keeps (shade = fraction of "
                  "heads), its attention weights (mean over heads)"))
    prec = [f"{label}: {100 * float(r['precision'].mean()):.0f} % of the kept keys homologous"
            for label, r in rows if r["precision"] is not None]
    if prec:
        chance = 100 * (curves.topk_chance(run.config) or 0)
        nb.add(Text("; ".join(prec) + f" (chance {fmt(chance)} %).", "note"))
    return [rec, cls, nb]


def _reconstructions(sec: Section, models, imgs, names, opts: ReportOptions) -> None:
    for i, (label, m) in enumerate(models):
        if m.cfg.mixing == "none":
            sec.add(Text(f"{label}: no mixing (MAE), so no mixed input to reconstruct", "note"))
            continue
        g = m.cfg.group_size
        with torch.random.fork_rng():
            torch.manual_seed(opts.seed)
            vis = m.visualize(imgs[:2 * g])
        png = "reconstructions.png" if i == 0 else "reconstructions_baseline.png"
        maps.plot_reconstructions(vis, opts.out / png, names[:2 * g])
        sec.add(Figure(png, f"{label}: original / mixed input / reconstruction of each source "
                       f"(visible patches pasted back, as the demo draws it)"))
    if not any(isinstance(b, Figure) for b in sec.blocks):
        sec.status = "missing"


def header(run: PretrainRun, base: PretrainRun | None) -> list[str]:
    lines = [run.describe(), f"run folder: {run.path.resolve()}; weights at step "
             f"{run.step if run.weights else '— (none saved)'}; {len(run.records)} log records"]
    if base is not None:
        lines.append("baseline: " + base.describe())
    lines += [f"generated {time.strftime('%Y-%m-%d %H:%M')} by `mixedae report`"] + run.problems
    return lines


def write_report(run_dir: str | Path, transfer_dirs=(), opts: ReportOptions | None = None) -> Path:
    """Write report.html, report.md and the PNGs into ``opts.out``; returns the HTML path."""
    opts = opts or ReportOptions(out=Path(run_dir) / "report")
    run = load_run(run_dir, opts.name)
    if opts.query is not None and run.config:
        n = (run.config["img_size"] // run.config["patch_size"]) ** 2
        if not 0 <= opts.query < n:
            raise ConfigError(f"--query-patch {opts.query}: the model has {n} patches")
    opts.out.mkdir(parents=True, exist_ok=True)
    base = load_run(opts.baseline) if opts.baseline else None
    results = [r for d in transfer_dirs for r in find_transfers(d)]
    sections = [curves_section(run, base, opts.out), topk_section(run, base, opts.out),
                *model_sections(run, base, opts), *transfer_sections(run, results)]
    return write(Report(f"MixedAE report: {run.name}", header(run, base), sections), opts.out)


