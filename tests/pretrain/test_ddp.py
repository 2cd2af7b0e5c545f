"""DDP (2 gloo ranks on CPU): same gradients as single-process, and a torchrun smoke run.

Each rank draws its masks from its own global RNG, so the reference is: the same micro-batches,
the same per-rank RNG seeds, computed one after another in a single process; DDP's averaged
gradients must equal the mean of those per-rank gradients (with gradient accumulation, so the
no_sync path is covered too).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image

from mixedae.pretrain.config import get_preset
from mixedae.runtime.distributed import cleanup, init_distributed, unused_parameters, wrap_ddp
from mixedae.model.mixed_autoencoder import MixedAutoencoder
from mixedae.pretrain.engine import train_step

REPO = Path(__file__).resolve().parents[2]
MICRO = dict(model="micro", img_size=32, patch_size=8, mask_patch_size=16, decoder_dim=32,
             decoder_depth=1, decoder_heads=2, homo_con_dim=16, batch_size=32, accum_iter=2)
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_grads(model_step, rank):
    """Init identically, seed the mask RNG per rank, run one accumulated step on rank's share."""
    cfg = get_preset("mixedae_tiny", **MICRO)
    imgs = torch.randn(cfg.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    micro = imgs.chunk(WORLD * cfg.accum_iter)[rank * cfg.accum_iter:(rank + 1) * cfg.accum_iter]
    torch.manual_seed(0)
    model = MixedAutoencoder(cfg.model_config())
    wrapped = model_step(model)
    torch.manual_seed(100 + rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_step(wrapped, iter(micro), opt, cfg.accum_iter, torch.device("cpu"))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, stats


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used, self.unused = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

    def forward(self, x):
        z = torch.zeros(())
        return dict(loss=self.used(x).mean(), loss_recon=z, loss_homocon=z, topk_acc=z[None])


def test_unused_parameter_probe_keeps_rng():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert unused_parameters(Toy(), torch.randn(2, 4)) == ["unused.weight", "unused.bias"]
    torch.manual_seed(0)
    assert torch.equal(torch.get_rng_state(), state)
    cfg = get_preset("mixedae_tiny", **MICRO)
    assert unused_parameters(MixedAutoencoder(cfg.model_config()), torch.randn(4, 3, 32, 32)) == []


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        probe = torch.randn(4, 3, 32, 32)  # the engine's unused-parameter probe (none here)
        grads, _ = rank_grads(lambda m: wrap_ddp(m, info, probe), rank)
        torch.save(grads, Path(out) / f"rank{rank}.pt")
        # a model with a parameter the loss never uses: detected, DDP still syncs the rest
        toy = Toy()
        ddp = wrap_ddp(toy, info, torch.randn(2, 4))
        assert ddp.find_unused_parameters
        train_step(ddp, iter([torch.full((2, 4), rank + 1.0)] * 2), torch.optim.SGD(
            toy.parameters(), lr=0.0), 2, torch.device("cpu"))
        torch.save(toy.used.weight.grad, Path(out) / f"toy{rank}.pt")
    finally:
        cleanup()


def test_ddp_gradients_match_single_process(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ref = [rank_grads(lambda m: m, r)[0] for r in range(WORLD)]
    mean = {k: sum(g[k] for g in ref) / WORLD for k in ref[0]}
    assert not all(torch.allclose(ref[0][k], ref[1][k]) for k in mean)  # ranks really differ
    for r in range(WORLD):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert set(got) == set(mean)
        for k in mean:
            torch.testing.assert_close(got[k], mean[k], rtol=1e-4, atol=1e-6, msg=k)
    toy = [torch.load(tmp_path / f"toy{r}.pt", weights_only=True) for r in range(WORLD)]
    torch.testing.assert_close(toy[0], torch.full((1, 4), 1.5))  # mean of ranks' inputs 1, 2
    torch.testing.assert_close(toy[1], toy[0])


def test_torchrun_two_ranks_cli(tmp_path):
    data = tmp_path / "data" / "cls"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "-m", "mixedae.cli", "pretrain",
           # the MAE baseline with gradient accumulation (no_sync path) under torchrun
           "--preset", "mae_tiny", "--accum-iter", "2",
           "--model", "micro", "--img-size", "32", "--patch-size", "8", "--set",
           "decoder_dim=32", "--set", "decoder_depth=1", "--set", "decoder_heads=2",
           "--batch-size", "16",
           "--data", str(data.parent), "--output-dir", str(out), "--device", "cpu",
           "--num-workers", "0", "--max-steps", "2", "--log-every", "1", "--no-progress"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # rank 0 only logs
    state = torch.load(out / "checkpoint.pth", weights_only=True)
    assert state["step"] == 2 and len(state["rng"]) == WORLD
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert (out / "model.safetensors").is_file()
    assert "2 rank(s) × micro-batch 4 × accum 2" in p.stderr
