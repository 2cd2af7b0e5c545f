import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MIXEDAE_DATA", REPO.parent / "shared" / "data"))


def data_dir(name: str) -> Path:
    """Path to ../shared/data/<name>; skips the calling test with a reason when absent."""
    p = DATA / name
    if not p.is_dir():
        pytest.skip(f"real dataset {p} not present (../shared/data is provided beside the repo)")
    return p


@pytest.fixture
def single_thread():
    """Tiny models run faster single-threaded, especially on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
