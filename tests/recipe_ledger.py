"""The recipe ledger: every value of every experiment, with its source and the field that
carries it. ``docs/recipes.md`` is rendered from these tables (``python tests/recipe_ledger.py >
docs/recipes.md``) and ``tests/test_recipes.py`` checks that it is; each ``test_recipes_*.py``
asserts the presets / configs / command defaults against the same rows, so a changed default
fails a test that names the paper's (or the cited reference's) value.

Sections (one module each, so that a section's owner edits one file):
  ledger_pretrain.py        pretraining presets (paper Tables 1, 3, 4, 6, 7; App. A-B)
  ledger_classification.py  ImageNet fine-tuning, linear probe, k-NN, 11-dataset transfer
  ledger_dense.py           ADE20K UperNet (BEiT), COCO Cascade Mask R-CNN (iBOT)
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    experiment: str       # one table of docs/recipes.md (e.g. "ADE20K UperNet, ViT-B")
    item: str             # what the value is (e.g. "layer-wise lr decay")
    value: object         # the paper's / cited reference's value (what the test asserts)
    source: str           # paper table / section, or the reference's file
    carrier: str          # the config field, flag or mm config key that carries it
    note: str = ""        # deviation from the source and its reason, or a reading of the text


SECTIONS = ("ledger_pretrain", "ledger_classification", "ledger_dense")


def all_rows() -> list[Recipe]:
    rows: list[Recipe] = []
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    for name in SECTIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        rows.extend(module.ROWS)
    return rows


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render(rows: list[Recipe] | None = None) -> str:
    rows = all_rows() if rows is None else rows
    out = ["# Recipe ledger", "",
           "Every value of every experiment this suite runs, with its source and the config "
           "field or flag that carries it. Rendered from `tests/recipe_ledger.py` "
           "(`python tests/recipe_ledger.py > docs/recipes.md`); the `tests/*/test_recipes_*.py` "
           "tests assert the code against the same rows.", ""]
    experiments: list[str] = []
    for r in rows:
        if r.experiment not in experiments:
            experiments.append(r.experiment)
    for exp in experiments:
        out += [f"## {exp}", "", "| item | value | source | carried by | note |",
                "|---|---|---|---|---|"]
        out += [f"| {_cell(r.item)} | {_cell(r.value)} | {_cell(r.source)} | `{_cell(r.carrier)}` "
                f"| {_cell(r.note)} |" for r in rows if r.experiment == exp]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
