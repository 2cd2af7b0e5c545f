"""The guard that keeps non-finite numbers out of the weights (and so out of checkpoints).

Before every optimizer step the gradients are checked with one fused ``torch._foreach_norm``
over all of them (a NaN or Inf anywhere makes its tensor's norm non-finite) and one host
sync. A bad step is never applied: with ``max_bad_steps = 0`` (the default) training stops
with :class:`TrainingDiverged` naming the step and the last good checkpoint, which is left as
it is; with ``max_bad_steps = N`` up to N bad steps are skipped (the step counter and the
data still advance) and counted, and the N+1-th stops the run. Under DDP the gradients are
already averaged over ranks, so every rank takes the same decision.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mixedae.runtime.errors import TrainingDiverged

log = logging.getLogger(__name__)


def grads_finite(optimizer: torch.optim.Optimizer) -> bool:
    """True when every gradient of ``optimizer``'s parameters is finite (one fused check)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


@dataclass
class FiniteGuard:
    """See module docstring. ``last_good`` is kept up to date by the engine (it names the
    last checkpoint written or resumed from)."""
    max_bad_steps: int = 0
    bad_steps: int = 0
    last_good: str = "none written yet"

    def saved(self, step: int, path) -> None:
        self.last_good = f"step {step} in {path}"

    def stop(self, step: int, what: str) -> None:
        raise TrainingDiverged(
            f"{what} at step {step}; stopped without saving (bad steps so far: "
            f"{self.bad_steps}, allowed {self.max_bad_steps}); last good checkpoint: "
            f"{self.last_good}")

    def step_ok(self, optimizer: torch.optim.Optimizer, step: int) -> bool:
        """Call between backward and ``optimizer.step()`` for optimizer step ``step`` (1-based).
        False: skip this step (its gradients are not finite)."""
        if grads_finite(optimizer):
            return True
        self.bad_steps += 1
        if self.bad_steps > self.max_bad_steps:
            self.stop(step, "non-finite gradients (NaN/Inf)")
        log.warning("non-finite gradients at step %d: step skipped (%d of at most %d)", step,
                    self.bad_steps, self.max_bad_steps)
        return False
