"""The project's error classes: expected failures that the command-line tools report as one
line (exit code 2, traceback only with ``--debug``)."""
from __future__ import annotations

from typing import Iterable


class MixedAEError(Exception):
    """Base of every expected failure (bad input, unusable file); its message names the file,
    key or value at fault."""


class ConfigError(MixedAEError, ValueError):
    """A configuration, flag or data layout that cannot run; raised before any work starts."""


class CheckpointError(MixedAEError, ValueError):
    """A checkpoint that cannot be read, converted or loaded as asked (names the keys)."""


class TrainingDiverged(MixedAEError):
    """Non-finite gradients or loss: training stopped without saving (the message names the
    step and the last good checkpoint)."""


def format_names(names: Iterable[str], limit: int = 8, sort: bool = True) -> str:
    """Names (keys, files) for an error or report line: the first ``limit`` (sorted unless
    ``sort=False`` keeps their order), then how many more."""
    names = sorted(names) if sort else list(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
