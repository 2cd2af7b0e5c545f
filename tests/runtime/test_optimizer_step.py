"""The one optimizer step of every engine (mixedae.runtime.optimizer_step)."""
import pytest
import torch

from mixedae.runtime.optimizer_step import optimizer_step


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    xs = torch.randn(4, 3).chunk(2)
    return model, torch.optim.SGD(model.parameters(), lr=1.0), iter(xs), torch.cat(xs)


def test_accumulated_step_equals_the_full_batch_and_averages_the_stats():
    model, opt, batches, x = _setup()

    def micro():
        loss = model(next(batches)).square().mean()
        return loss, torch.stack([loss, 2 * loss])
    ref = model(x).square().mean()
    grads = torch.autograd.grad(ref, list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    stats = optimizer_step(model, opt, 2, micro)
    for p, g, b in zip(model.parameters(), grads, before):
        torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(p.detach(), b - g)       # lr 1: one SGD update applied
    torch.testing.assert_close(stats, torch.stack([ref, 2 * ref]).detach())


def test_refused_step_is_not_applied_and_clipping_bounds_the_gradient():
    model, opt, batches, _ = _setup()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(model, opt, 2, lambda: (100 * model(next(batches)).sum(), torch.zeros(1)),
                   clip_grad=0.5, apply=lambda: False)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    assert norm == pytest.approx(0.5, rel=1e-4)

