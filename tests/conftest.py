import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MIXEDAE_DATA", REPO.parent / "shared" / "data"))


def data_dir(name: str) -> Path:
    """Path to ../shared/data/<name>; skips the calling test with a reason when absent."""
    p = DATA / name
    if not p.is_dir():
        pytest.skip(f"real dataset {p} not present (../shared/data is provided beside the repo)")
    return p
