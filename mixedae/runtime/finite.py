"""The guard that keeps non-finite numbers out of the weights (and so out of checkpoints).

Before every optimizer step the gradients are checked with one fused ``torch._foreach_norm``
over all of them (a NaN or Inf anywhere makes its tensor's norm non-finite) and one host
sync. A bad step is never applied: with ``max_bad_steps = 0`` (the default) training stops
with :class:`TrainingDiverged` naming the step and the last good checkpoint, which is left as
it is; with ``max_bad_steps = N`` up to N bad steps are skipped (the step counter and the
data still advance) and counted, and the N+1-th stops the run. Under DDP the gradients are
already averaged over ranks, so every rank takes the same decision.

Finite gradients do not prove finite weights: a step with a huge learning rate can put the
weights (or AdamW's moments) beyond what fp32 can use. So before every save the engine calls
``FiniteGuard.check_state``: one fused ``torch._foreach_norm`` over all parameters and optimizer
state tensors, counted as bad when any norm's square is not finite in fp32 (a NaN / Inf, or
entries around 1e19 and beyond, whose squares no longer fit and which overflow the next forward).
A bad state is never saved: the run stops with :class:`TrainingDiverged`, and the previous
checkpoint pair stays the last good one. Under DDP every rank holds the same parameters and
optimizer state, so every rank takes the same decision.
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


def state_finite(optimizer: torch.optim.Optimizer) -> bool:
    """True when every parameter of ``optimizer`` and every floating tensor of its state has a
    norm whose square is finite in fp32 (one fused norm, one host sync)."""
    tensors = [p.detach() for g in optimizer.param_groups for p in g["params"]]
    tensors += [v for st in optimizer.state.values() for v in st.values()
                if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1]
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)
    return bool(torch.stack([n.float() for n in norms]).square().isfinite().all())


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

    def check_state(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Call before saving after optimizer step ``step``: stops the run (without saving)
        when the weights or optimizer state are not finite."""
        if not state_finite(optimizer):
            self.stop(step, "non-finite weights or optimizer state after the update "
                            "(|w|² overflows fp32)")

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
