"""The project's error classes: expected failures that the command-line tools report as one
line (exit code 2, traceback only with ``--debug``)."""
from __future__ import annotations


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
