"""torch.distributed helpers for ``torchrun`` (env:// rendezvous; NCCL on GPU, gloo on CPU).

Single node, 8 GPUs::

    torchrun --standalone --nproc_per_node 8 -m mixedae.cli pretrain --preset mixedae_base \\
        --data /path/to/imagenet/train --output-dir runs/mixedae_base

Multi-node (run the same command on every node, ``--node_rank`` 0..nnodes-1)::

    torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK \\
        --rdzv_backend c10d --rdzv_endpoint $MASTER_HOST:29500 --rdzv_id mixedae_run \\
        -m mixedae.cli pretrain --preset mixedae_base --data ... --output-dir ...

(or the static form ``--master_addr $MASTER_HOST --master_port 29500`` instead of ``--rdzv_*``).
``--batch-size`` is always the global batch: per-GPU micro-batch = batch / (world · accum_iter).
Without torchrun (no ``WORLD_SIZE`` in the environment) everything runs in one process.

A collective that waits longer than ``MIXEDAE_DIST_TIMEOUT`` seconds (default 300) fails on
every waiting rank, so a hung rank ends the job with one clear line instead of blocking it.
torchrun then SIGTERMs the other ranks, but waits a fixed 30 s before the SIGKILL that alone
ends a *frozen* rank (SIGSTOP'ed, stopped in a debugger): so each rank records its local
peers at :func:`init_distributed`, and a rank whose collective failed ends the stopped ones
on its host (:func:`end_stopped_peers`, called by ``runtime.cli.run_main``) before it exits,
and the job is over within the limit plus a few seconds.
"""
from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from mixedae.runtime.errors import ConfigError

DEFAULT_TIMEOUT_S = 300.0
# the other ranks started by the same launcher on this host: (rank, pid, start time)
_local_peers: list[tuple[int, int, str]] = []


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def timeout_seconds() -> float:
    """The collective timeout: ``MIXEDAE_DIST_TIMEOUT`` seconds (default 300)."""
    raw = os.environ.get("MIXEDAE_DIST_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"MIXEDAE_DIST_TIMEOUT={raw!r} must be a positive number of seconds")
    return value


def parse_device(device: str | None) -> torch.device:
    """'cuda', 'cpu', 'cuda:N' or None (CUDA if available); one ConfigError line for a device
    that does not exist here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    return dev


def init_distributed(device: str | None = None) -> DistInfo:
    """Initialise the process group from torchrun's env vars (no-op for a single process),
    with the collective timeout of :func:`timeout_seconds`.

    ``device``: 'cuda', 'cpu', 'cuda:N' or None (CUDA if available). Under torchrun each rank
    uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = parse_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_seconds()), **kw)
        _record_local_peers(rank)
    return DistInfo(rank, world, local_rank, dev)


def _proc_stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process from ``/proc`` (None: gone, or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), fields[19]


def _record_local_peers(rank: int) -> None:
    """Remember the ranks on this host with the same parent (the launcher) as this one."""
    me = _proc_stat(os.getpid())
    everyone = all_gather_object((rank, socket.gethostname(), os.getpid(), os.getppid(),
                                  me[2] if me else None))
    _local_peers[:] = [(r, pid, start) for r, host, pid, ppid, start in everyone
                       if r != rank and host == socket.gethostname() and ppid == os.getppid()
                       and start is not None]


def end_stopped_peers() -> list[int]:
    """SIGKILL the local peers (recorded at :func:`init_distributed`) that are stopped (state
    T/t: SIGSTOP, a debugger), which the launcher's SIGTERM cannot end; returns their ranks.
    A process is only touched while its pid and start time are still the recorded ones."""
    ended = []
    for rank, pid, start in _local_peers:
        st = _proc_stat(pid)
        if st is not None and st[2] == start and st[0] in ("T", "t"):
            try:
                os.kill(pid, signal.SIGKILL)
                ended.append(rank)
            except OSError:
                pass
    return ended


def unused_parameters(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """Trainable parameters that get no gradient from one probe step on ``example`` (e.g. the
    segment embedding of an MAE run); global RNG state is left untouched."""
    devices = [example.device] if example.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        out = model(example)
        (out["loss"] if isinstance(out, dict) else out).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return names


def wrap_ddp(model: torch.nn.Module, info: DistInfo,
             example: torch.Tensor | None = None) -> torch.nn.Module:
    """DistributedDataParallel for more than one rank (the model itself otherwise).

    With an ``example`` batch, parameters unused by the config are detected once up front and
    only then is DDP's per-step unused-parameter search (``find_unused_parameters``) enabled.
    """
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    unused = unused_parameters(model, example) if example is not None else []
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=bool(unused))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (returns a new tensor; identity for one process)."""
    if get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / get_world_size()


def all_gather_object(obj) -> list:
    """List of ``obj`` from every rank (``[obj]`` for one process)."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
