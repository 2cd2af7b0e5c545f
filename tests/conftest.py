import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# tests/ mirrors the package (tests/model, tests/runtime, ...); a test may use another folder's
# helpers (``from test_train import synthetic_folder``), so every folder is importable
for _folder in sorted(p for p in Path(__file__).resolve().parent.iterdir()
                      if p.is_dir() and not p.name.startswith((".", "_"))):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist (tools/run.sh test): one worker per core, so one thread per worker and per
    # subprocess it starts; OpenMP threads beyond the cores only spin against each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
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


# Test files measured as the longest (tools/run.sh test runs whole files per xdist worker with
# --no-loadscope-reorder): started first, longest first, so the workers finish together.
LONGEST_FIRST = ("test_pipeline.py", "test_mm_dist.py", "test_transfer.py",
                 "test_reliability.py", "test_mm_metric_path.py", "test_linprobe_knn.py",
                 "test_finetune.py", "test_mm_test_infer.py", "test_mm_newcomer.py",
                 "test_ddp.py", "test_mm_simple_fpn.py", "test_gpu_suite.py",
                 "test_topk_triton.py", "test_mm_browse.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise
