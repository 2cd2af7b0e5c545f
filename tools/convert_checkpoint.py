#!/usr/bin/env python
"""Thin wrapper: ``python tools/convert_checkpoint.py SRC OUT --to {mm,timm,vit,classifier}``
(same as ``mixedae convert``; see mixedae/convert.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv

from mixedae.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
