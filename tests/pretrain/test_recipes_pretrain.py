"""Every pretraining preset holds the paper's values of the ledger (tests/ledger_pretrain.py)."""
import math

import pytest

from ledger_pretrain import ROWS
from mixedae.pretrain.config import PRESETS, get_preset


def _actual(carrier: str):
    preset, _, fields = carrier.partition(".")
    cfg = get_preset(preset)
    vals = []
    for f in (s.strip() for s in fields.split(",")):
        v = getattr(cfg, f)
        vals.append(v() if callable(v) else v)
    return vals[0] if len(vals) == 1 else tuple(vals)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.carrier}")
def test_preset_holds_the_paper_value(row):
    got = _actual(row.carrier)
    same = math.isclose(got, row.value, rel_tol=1e-12) if isinstance(row.value, float) \
        and not isinstance(got, (str, bool, tuple)) else got == row.value
    assert same, (f"{row.carrier} = {got!r}, but the paper's value for '{row.item}' is "
                  f"{row.value!r} ({row.source})")


def test_every_paper_preset_is_in_the_ledger():
    covered = {r.carrier.partition(".")[0] for r in ROWS}
    assert set(PRESETS) == covered, set(PRESETS) ^ covered
