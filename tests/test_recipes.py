"""docs/recipes.md is the rendering of the ledger (tests/recipe_ledger.py), never edited by hand."""
from pathlib import Path

from recipe_ledger import all_rows, render

REPO = Path(__file__).resolve().parents[1]


def test_recipes_doc_is_rendered_from_the_ledger():
    doc = REPO / "docs" / "recipes.md"
    assert doc.read_text() == render(), \
        "docs/recipes.md is stale: run `python tests/recipe_ledger.py > docs/recipes.md`"


def test_every_ledger_row_names_source_and_carrier():
    rows = all_rows()
    assert rows, "the ledger is empty"
    for r in rows:
        assert r.source.strip() and r.carrier.strip(), r
