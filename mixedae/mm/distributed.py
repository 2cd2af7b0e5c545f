"""Multi-process runs without CUDA (gloo), which mmengine 0.10.7 cannot start by itself:

* its ``pytorch`` and ``slurm`` launchers call ``torch.cuda.set_device`` unconditionally
  (``mmengine.dist.utils._init_dist_pytorch`` / ``_init_dist_slurm``), which fails with "Found
  no NVIDIA driver" (slurm: a division by the GPU count, 0). The Runner only initialises the
  process group when none exists, so :func:`init_cpu_process_group` starts the gloo group
  first: ``env://`` from torchrun, or for Slurm the variables mmengine would derive
  (RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR =
  the first host of SLURM_NODELIST unless set, MASTER_PORT from :func:`slurm_master_port`);
* its default model wrapper passes ``device_ids=[LOCAL_RANK]``, which torch's DDP refuses for
  a CPU module; :class:`CPUDistributedDataParallel` (``model_wrapper_cfg``) drops it.

SyncBN has no CPU kernel, so :func:`mixedae.mm.runner.adapt_to_machine` turns it into BN there.
"""
from __future__ import annotations

import os
import subprocess

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module(force=True)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for a CPU module (no ``device_ids``)."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


# Slurm jobs' rendezvous ports: 10000 + SLURM_JOB_ID % 20000, below Linux's ephemeral range
# (32768-60999), so two jobs sharing a node do not both take torch's default 29500
SLURM_PORT_BASE, SLURM_PORT_SPAN = 10000, 20000


def slurm_master_port() -> str:
    """MASTER_PORT of a ``--launcher slurm`` task: the user's MASTER_PORT if set, else derived
    from SLURM_JOB_ID (the same on every task of a job), else 29500; set in the environment,
    where mmengine's launcher and :func:`init_cpu_process_group` read it."""
    env = os.environ
    if "MASTER_PORT" not in env:
        job = env.get("SLURM_JOB_ID", "")
        env["MASTER_PORT"] = (str(SLURM_PORT_BASE + int(job) % SLURM_PORT_SPAN)
                              if job.isdigit() else "29500")
    return env["MASTER_PORT"]


def _slurm_env() -> None:
    env = os.environ
    if "MASTER_ADDR" not in env:
        hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_NODELIST"]],
                               capture_output=True, text=True, check=True).stdout.split()
        env["MASTER_ADDR"] = hosts[0]
    slurm_master_port()
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")


def init_cpu_process_group(launcher: str) -> bool:
    """Start the gloo process group for ``--launcher pytorch|slurm`` when CUDA is unavailable.
    Returns True if it did."""
    if launcher not in ("pytorch", "slurm") or torch.cuda.is_available() \
            or dist.is_initialized():
        return False
    if launcher == "slurm":
        _slurm_env()
    dist.init_process_group(backend="gloo", init_method="env://")
    return True
