"""Report sections for the transfer results, each beside the paper's numbers for the same ViT
size (rows labelled "paper, Table N").

A result is credited to the reported run ("this run (measured)") only when the checkpoint it
records (``runtime.provenance``: path, size, sha256) is one of the run's weight files, byte for
byte; any other result is still shown, as "another checkpoint" or "checkpoint unknown" with
the path it names ("no checkpoint" where it records random initialisation). Each row names
its dataset; the paper's rows name theirs. Linear probe and k-NN results (which the paper
does not report) get one section of their own, shown when there are any.
"""
from __future__ import annotations

from mixedae import paper_numbers
from mixedae.report.collect import PretrainRun, TransferResult, finite
from mixedae.report.document import Section, Table, Text
from mixedae.runtime.provenance import is_record, matches

SPECS = {  # kind → (title, column keys, paper table, how to produce it)
    "finetune": ("Fine-tuning (top-1)", ("top1",), paper_numbers.DENSE,
                 "mixedae finetune --data IMAGENET --checkpoint RUN_DIR --output-dir DIR"),
    "ade": ("ADE20K semantic segmentation (UperNet, mIoU)", ("mIoU",), paper_numbers.DENSE,
            "python tools/train.py mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py "
            "--pretrained RUN_DIR --work-dir DIR"),
    "coco": ("COCO detection and instance segmentation (Cascade Mask R-CNN)",
             ("AP_bb", "AP50_bb", "AP75_bb", "AP_mk", "AP50_mk", "AP75_mk"), paper_numbers.DENSE,
             "python tools/train.py mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"
             " --pretrained RUN_DIR --work-dir DIR"),
    "cls11": ("11 downstream classification datasets (Table 2)", paper_numbers.CLS11_COLUMNS,
              paper_numbers.CLS11,
              "mixedae transfer --datasets all --root ROOT --checkpoint RUN_DIR --output-dir DIR"),
}


NAMES = {"finetune": "fine-tuning", "ade": "ADE20K", "coco": "COCO", "cls11": "11-dataset"}
PAPER_DATA = {"finetune": "ImageNet-1K", "ade": "ADE20K", "coco": "COCO", "cls11": "11 datasets"}


def credit(r: TransferResult, run: PretrainRun) -> tuple[str, str | None]:
    """(source cell, note) of a measured row: this run only when its checkpoint is the run's."""
    ck = r.checkpoint
    if matches(ck, run.weight_files()):
        step = f" at step {ck['step']}" if ck.get("step") is not None else ""
        return "this run (measured)", (f"checkpoint {ck['path']}{step} (sha256 "
                                       f"{ck['sha256'][:12]}…)")
    if is_record(ck):
        return "another checkpoint (measured)", (f"not this run's weights: {ck['path']} (sha256 "
                                                 f"{ck['sha256'][:12]}…, step {ck.get('step')})")
    if ck and ck.get("scratch"):
        return "no checkpoint (measured)", (f"trained from random initialisation (its record "
                                            f"names no checkpoint): not credited to {run.name}")
    named = f" (it names {ck['path']})" if ck and ck.get("path") else ""
    return "checkpoint unknown (measured)", (f"no checkpoint fingerprint recorded{named}: not "
                                             f"credited to {run.name}")


def data_label(kind: str, r: TransferResult) -> str:
    if r.data is None:
        return "not recorded"
    return r.data + (f" (not {PAPER_DATA[kind]})" if r.data_is_paper is False else "")


def fmt(v) -> str:
    return f"{v:.1f}" if finite(v) else "–"


def _paper_row(row: paper_numbers.PaperRow, cols, data: str) -> list[str]:
    vals = [fmt(row.values.get(c)) + ("†" if c in row.derived else "") for c in cols]
    return [f"{row.method} ({row.epochs} ep)", row.source, data] + vals


def comparison(kind: str, ours: list[TransferResult], run: PretrainRun) -> Section:
    title, cols, table, how = SPECS[kind]
    size = (run.config or {}).get("model", "base")
    rows_paper, size_note = paper_numbers.rows_for(table, size)
    sec = Section(title)
    header = ["method", "source", "data"] + [paper_numbers.DENSE_COLUMNS.get(c, c)
                                             if kind != "finetune" else "top-1" for c in cols]
    credits = [credit(r, run) for r in ours]
    rows = [[run.name if who.startswith("this run") else r.path.name, who, data_label(kind, r)]
            + [fmt(r.metrics.get(c)) for c in cols] for r, (who, _) in zip(ours, credits)]
    rows += [_paper_row(r, cols, PAPER_DATA[kind]) for r in rows_paper]
    if not ours:
        sec.status = "missing"
        sec.add(Text(f"no {NAMES[kind]} result was found in the given folders; produce one with "
                     f"`{how}` (or `mixedae pipeline --transfers {kind}`) and pass DIR to "
                     f"`mixedae report`.", "missing"))
    sec.add(Table(header, rows, caption="values in %; rows whose source is \"paper, ...\" are "
                  "copied from the paper, not measured here", source_col=1))
    for r, (_, why) in zip(ours, credits):
        extra = {k: v for k, v in r.metrics.items() if k not in cols}
        more = ("; also " + ", ".join(f"{k} {fmt(v)}" for k, v in extra.items())) if extra else ""
        sec.add(Text(f"{r.path}: {r.note}{more}; {why}.", "note"))
        if r.data_is_paper is False:
            sec.add(Text(f"{r.path}: measured on {r.data}, not {PAPER_DATA[kind]}: not "
                         f"comparable with the paper's rows.", "note"))
    if any(c in r.derived for r in rows_paper for c in cols):
        sec.add(Text("† " + paper_numbers.DERIVED_NOTE, "note"))
    if size_note:
        sec.add(Text(size_note, "note"))
    return sec


FROZEN = {"linprobe": "linear probe (MAE's recipe)", "knn": "k-NN (DINO's)"}


def frozen_section(ours: list[TransferResult], run: PretrainRun) -> Section:
    """``mixedae linprobe`` / ``knn`` results, one row per data (the paper reports neither)."""
    sec = Section("Frozen-encoder evaluations: linear probe and k-NN")
    cols = list(dict.fromkeys(c for r in ours for c in r.metrics))
    credits = [credit(r, run) for r in ours]
    rows = [[run.name if who.startswith("this run") else r.path.parent.name, who, FROZEN[r.kind],
             r.data or "not recorded"] + [fmt(r.metrics.get(c)) for c in cols]
            for r, (who, _) in zip(ours, credits)]
    sec.add(Table(["method", "source", "evaluation", "data"] + cols, rows,
                  caption="values in % (each data's protocol metric); the paper reports no "
                  "linear probe or k-NN numbers to compare with", source_col=1))
    for r, (_, why) in zip(ours, credits):
        sec.add(Text(f"{r.path}: {r.note}; {why}.", "note"))
    return sec


def transfer_sections(run: PretrainRun, results: list[TransferResult]) -> list[Section]:
    frozen = [r for r in results if r.kind in FROZEN]
    return [comparison(kind, [r for r in results if r.kind == kind], run)
            for kind in ("finetune", "ade", "coco", "cls11")] + (
        [frozen_section(frozen, run)] if frozen else [])
