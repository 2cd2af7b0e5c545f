"""Report sections for the transfer results, each beside the paper's numbers for the same ViT
size (rows labelled "paper, Table N"; ours "this run")."""
from __future__ import annotations

from mixedae.report import paper
from mixedae.report.collect import PretrainRun, TransferResult, finite
from mixedae.report.document import Section, Table, Text

SPECS = {  # kind → (title, column keys, paper table, how to produce it)
    "finetune": ("ImageNet fine-tuning (top-1)", ("top1",), paper.DENSE,
                 "mixedae finetune --data IMAGENET --checkpoint RUN_DIR --output-dir DIR"),
    "ade": ("ADE20K semantic segmentation (UperNet, mIoU)", ("mIoU",), paper.DENSE,
            "python tools/train.py mmseg_configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py "
            "--pretrained RUN_DIR --work-dir DIR"),
    "coco": ("COCO detection and instance segmentation (Cascade Mask R-CNN)",
             ("AP_bb", "AP50_bb", "AP75_bb", "AP_mk", "AP50_mk", "AP75_mk"), paper.DENSE,
             "python tools/train.py mmdet_configs/cascade-mask-rcnn_vit-b16_fpn_8xb2-amp-1x_coco.py"
             " --pretrained RUN_DIR --work-dir DIR"),
    "cls11": ("11 downstream classification datasets (Table 2)", paper.CLS11_COLUMNS,
              paper.CLS11,
              "mixedae transfer --datasets all --root ROOT --checkpoint RUN_DIR --output-dir DIR"),
}


NAMES = {"finetune": "fine-tuning", "ade": "ADE20K", "coco": "COCO", "cls11": "11-dataset"}


def fmt(v) -> str:
    return f"{v:.1f}" if finite(v) else "–"


def _paper_row(row: paper.PaperRow, cols) -> list[str]:
    vals = [fmt(row.values.get(c)) + ("†" if c in row.derived else "") for c in cols]
    return [f"{row.method} ({row.epochs} ep)", row.source] + vals


def comparison(kind: str, ours: list[TransferResult], run: PretrainRun) -> Section:
    title, cols, table, how = SPECS[kind]
    size = (run.config or {}).get("model", "base")
    rows_paper, size_note = paper.rows_for(table, size)
    sec = Section(title)
    header = ["method", "source"] + [paper.DENSE_COLUMNS.get(c, c) for c in cols]
    rows = [[run.name, "this run (measured)"] + [fmt(r.metrics.get(c)) for c in cols]
            for r in ours]
    rows += [_paper_row(r, cols) for r in rows_paper]
    if not ours:
        sec.status = "missing"
        sec.add(Text(f"no {NAMES[kind]} result was found in the given folders; produce one with "
                     f"`{how}` (or `mixedae pipeline --transfers {kind}`) and pass DIR to "
                     f"`mixedae report`.", "missing"))
    sec.add(Table(header, rows, caption="values in %; rows whose source is \"paper, ...\" are "
                  "copied from the paper, not measured here", source_col=1))
    for r in ours:
        extra = {k: v for k, v in r.metrics.items() if k not in cols}
        more = ("; also " + ", ".join(f"{k} {fmt(v)}" for k, v in extra.items())) if extra else ""
        sec.add(Text(f"{r.path}: {r.note}{more}.", "note"))
    if any(c in r.derived for r in rows_paper for c in cols):
        sec.add(Text("† " + paper.DERIVED_NOTE, "note"))
    if size_note:
        sec.add(Text(size_note, "note"))
    return sec


def transfer_sections(run: PretrainRun, results: list[TransferResult]) -> list[Section]:
    return [comparison(kind, [r for r in results if r.kind == kind], run)
            for kind in ("finetune", "ade", "coco", "cls11")]
