"""The entry points' check that they run in the project's Python environment: ``tools/*.py``
call :func:`require_torch` before their first ``import torch``, the launchers
(``tools/_launch.sh``) through their ``PYTHON``. Outside it the user gets one line saying how
to run the command instead of a ``ModuleNotFoundError`` traceback. Imports nothing beyond the
standard library (it must run where torch is missing)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when below it, else absolute."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else rel


def require_torch(entry: str) -> None:
    """Exit with code 2 and one line on stderr when this interpreter cannot import torch.
    ``entry`` is the command's file (a tool's ``__file__``, a launcher's ``$0``)."""
    if importlib.util.find_spec("torch") is not None:
        return
    entry = _shown(Path(entry).resolve())
    launcher = entry.endswith(".sh")
    if VENV_PYTHON.exists():
        venv = _shown(VENV_PYTHON)
        fix = (f"run `PYTHON={venv} bash {entry} ...` (or leave PYTHON unset: it defaults to "
               f"{venv})" if launcher else f"run `{venv} {entry} ...`")
    else:
        fix = (f"create it with `bash tools/setup_env.sh` (it installs {_shown(VENV_PYTHON)}, "
               f"which {'the launchers use by default' if launcher else 'runs the tools'})")
    print(f"error: {entry}: {sys.executable} has no torch, it is not the project's Python "
          f"environment; {fix}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":   # tools/_launch.sh: python -m mixedae.runtime.environment ENTRY
    require_torch(sys.argv[1] if len(sys.argv) > 1 else "this command")
