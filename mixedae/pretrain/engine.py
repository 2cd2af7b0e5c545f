"""``mixedae pretrain``: MixedAE / MAE / baseline pretraining (Sec. 4.1, Appendix B Table 4).

    mixedae pretrain --preset mixedae_base --data /imagenet/train --output-dir runs/mixedae_base
    torchrun --standalone --nproc_per_node 8 -m mixedae.cli pretrain --preset ... (see
    mixedae/distributed.py for multi-node flags)

Recipe: AdamW (betas from the config, weight decay 0.05, none on norms / biases / tokens /
embeddings), lr = blr · batch / 256, MAE's per-iteration linear-warmup + cosine schedule,
gradient accumulation, bf16 autocast on CUDA (a grad scaler only for fp16), optional
torch.compile, DDP. ``--batch-size`` is global: every rank sees batch / (world · accum) images
per micro-batch, which must be divisible by the group size 1/r.

Outputs in ``--output-dir``: ``checkpoint.pth`` (resumable, atomic; every ``--save-every`` steps
and at the end), ``model.safetensors``, ``config.json``, ``log.jsonl`` (one JSON line per logged
step) and tensorboard scalars in ``tb/`` (``topk_acc/layer_{i}``: i is the encoder block index;
``homocon_ratio``: the HomoCon loss over its floor ln |P|). With ``--probe-every N`` the
source-identity probe (``mixedae.pretrain.probe``) runs at step 0, every N steps and at the end:
log.jsonl lines ``{"step", "probe_acc", "probe_chance"}``, tensorboard ``probe/*``.
A killed run continues bit-exactly with ``--resume auto`` (same data order, crops and masks).

The engine ``pretrain(cfg, dataset, opts)`` is shared with ``mixedae demo``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mixedae.runtime import checkpoint as ckpt
from mixedae.pretrain.config import PRESETS, ConfigError, PretrainConfig, get_preset
from mixedae.pretrain.data import ResumableSampler, build_pretrain_dataset
from mixedae.pretrain.probe import SourceProbe, homocon_floor
from mixedae.runtime.distributed import (DistInfo, all_gather_object, all_reduce_mean, init_distributed,
                          wrap_ddp)
from mixedae.runtime.schedules import cosine_lr, set_lr

log = logging.getLogger("mixedae.pretrain.engine")


@dataclass
class RunOptions:
    """Everything about a run that is not the method/recipe (``PretrainConfig``)."""
    output_dir: str = "runs/pretrain"
    num_workers: int = 8
    save_every: int = 1000          # optimizer steps
    max_steps: int | None = None    # stop early (tests / benchmarks)
    time_limit: float | None = None # seconds of training, checked at log steps (job walltime)
    resume: str | None = "auto"     # 'auto' | path | None
    seed: int = 0
    device: str | None = None       # None → cuda if available
    amp: str = "bf16"               # bf16 | fp16 | none (CUDA only)
    compile: bool = False
    log_every: int = 20
    progress: bool = True           # tqdm bar on rank 0
    probe_every: int = 0            # source-identity probe at step 0 and every N steps (0: off)
    probe_images: int = 64          # images in the probe's fixed mixed batch


@dataclass
class PretrainResult:
    model: torch.nn.Module          # unwrapped model (no DDP / compile)
    step: int
    metrics: dict                   # last logged metrics


# ---- setup -----------------------------------------------------------------------------------
def micro_batch_size(cfg: PretrainConfig, world_size: int) -> int:
    """Per-rank micro-batch = batch / (world · accum); must be a positive multiple of 1/r."""
    denom = world_size * cfg.accum_iter
    if cfg.batch_size % denom:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by world_size "
                          f"({world_size}) × accum_iter ({cfg.accum_iter})")
    micro = cfg.batch_size // denom
    if micro % cfg.group_size:
        raise ConfigError(f"per-rank micro-batch {micro} (batch_size={cfg.batch_size} / "
                          f"(world {world_size} × accum {cfg.accum_iter})) is not divisible by "
                          f"the group size 1/r={cfg.group_size}")
    return micro


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on ndim<=1 params, biases and ``model.no_weight_decay()``."""
    from timm.optim import param_groups_weight_decay
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.effective_lr(), betas=tuple(cfg.betas), fused=fused)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in ("bf16", "fp16", "none"):
        raise ConfigError(f"amp={amp!r} must be 'bf16', 'fp16' or 'none'")
    if device.type != "cuda" or amp == "none":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def train_step(model, batches, optimizer, accum_iter: int, device: torch.device,
               dtype: torch.dtype | None = None, scaler=None) -> torch.Tensor:
    """One optimizer step over ``accum_iter`` micro-batches drawn from ``batches``.

    DDP gradients are synchronised on the last micro-batch only. Returns the detached stats
    ``[loss, loss_recon, loss_homocon, *topk_acc]`` averaged over micro-batches (no host sync).
    Gradients stay in ``.grad`` after the step (they are cleared at the start of the next).
    """
    optimizer.zero_grad(set_to_none=True)
    stats = 0.0
    for i in range(accum_iter):
        imgs = next(batches)
        imgs = (imgs[0] if isinstance(imgs, (tuple, list)) else imgs).to(device, non_blocking=True)
        sync = nullcontext() if i == accum_iter - 1 or not hasattr(model, "no_sync") \
            else model.no_sync()  # (a compiled DDP module forwards no_sync too)
        with sync:
            with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
                out = model(imgs)
            loss = out["loss"].float() / accum_iter
            (scaler.scale(loss) if scaler is not None else loss).backward()
        stats = stats + torch.cat([torch.stack([out["loss"], out["loss_recon"],
                                                out["loss_homocon"]]).detach().float(),
                                   out["topk_acc"].detach().float().reshape(-1)]) / accum_iter
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return stats


class RunLogger:
    """Rank-0 progress: tqdm bar, tensorboard scalars, ``log.jsonl`` (truncated on resume)."""

    def __init__(self, output_dir: Path, start_step: int, total: int, enabled: bool,
                 progress: bool, topk_offset: int, homocon_floor: float | None = None):
        self.enabled, self.topk_offset, self.homocon_floor = enabled, topk_offset, homocon_floor
        self.bar = self.tb = None
        if not enabled:
            return
        self.jsonl = output_dir / "log.jsonl"
        if self.jsonl.exists():  # drop entries past the resume point (and all on a fresh run)
            keep = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            ckpt.atomic_write(self.jsonl, lambda t: Path(t).write_text(
                "".join(line + "\n" for line in keep)))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(output_dir / "tb"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is optional on the training box
            log.warning("tensorboard not installed; scalars only go to %s", self.jsonl)
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=start_step, disable=not progress,
                        dynamic_ncols=True, desc="pretrain",
                        mininterval=0.1 if sys.stderr.isatty() else 30.0)  # quiet in log files

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, epoch: int, values: list[float], lr: float, img_s: float) -> dict:
        loss, rec, homo, *acc = values
        rec_ = dict(step=step, epoch=epoch, loss=loss, loss_recon=rec, loss_homocon=homo, lr=lr,
                    topk_acc=acc, img_per_s=img_s)
        if self.homocon_floor:
            rec_["homocon_ratio"] = homo / self.homocon_floor
        if not self.enabled:
            return rec_
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(rec_) + "\n")
        if self.tb is not None:
            for k in ("loss", "loss_recon", "loss_homocon", "lr", "homocon_ratio"):
                if k in rec_:
                    self.tb.add_scalar(k, rec_[k], step)
            self.tb.add_scalar("img_per_s", img_s, step)
            for i, a in enumerate(acc):
                self.tb.add_scalar(f"topk_acc/layer_{i + self.topk_offset}", a, step)
        return rec_

    def log_probe(self, step: int, values: dict) -> None:
        """A probe result: console, its own log.jsonl line, tensorboard ``probe/*``."""
        log.info("step %d: source-identity probe %s", step,
                 ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(dict(step=step, **values)) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"probe/{k}", v, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


# ---- the engine ------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, dataset, opts: RunOptions,
             dist_info: DistInfo | None = None, probe_dataset=None) -> PretrainResult:
    """Pretrain ``build_model(cfg)`` on ``dataset`` (items: normalised (3,H,W) tensors, indexed
    by ``(index, seed)``, e.g. ``mixedae.pretrain.data.PretrainImages``). Resumes per
    ``opts.resume``. The probe (``opts.probe_every``) uses ``probe_dataset`` (default
    ``dataset``)."""
    from mixedae.model.mixed_autoencoder import build_model

    cfg.validate()
    info = dist_info or init_distributed(opts.device)
    dev, main = info.device, info.is_main
    micro = micro_batch_size(cfg, info.world_size)
    dtype = amp_dtype(opts.amp, dev)
    out_dir = Path(opts.output_dir)
    source_probe = SourceProbe(cfg, probe_dataset or dataset, dev, opts.probe_images,
                               opts.seed) if opts.probe_every and main else None

    sampler = ResumableSampler(dataset, micro * cfg.accum_iter, info.world_size, info.rank,
                               seed=opts.seed)
    spe = sampler.steps_per_epoch
    if spe == 0:
        raise ConfigError(f"dataset has {len(dataset)} images, fewer than one global batch "
                          f"({cfg.batch_size}) of world size {info.world_size}")
    total = int(round(cfg.epochs * spe))
    warmup = cfg.warmup_epochs * spe
    end = min(total, opts.max_steps) if opts.max_steps else total
    base_lr = cfg.effective_lr()

    torch.manual_seed(opts.seed)  # identical initialisation on every rank
    model = build_model(cfg).to(dev)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    step, rng = 0, None
    resume = ckpt.resolve_resume(opts.resume, out_dir)
    if resume is not None:
        state = ckpt.load_checkpoint(resume)
        ckpt.load_model_state(model, state["model"], source=str(resume))
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, rng = state["step"], state["rng"]
        old = json.loads(state["config"])
        diff = sorted(k for k, v in json.loads(cfg.to_json()).items() if old.get(k) != v)
        if diff and main:
            log.warning("resuming %s with a changed config: %s", resume, diff)
        if main:
            log.info("resumed from %s at step %d", resume, step)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(
            json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")
        log.info("%d image(s), %d rank(s) × micro-batch %d × accum %d = batch %d; "
                 "%d steps/epoch, %d steps (lr %.3g)", len(dataset), info.world_size, micro,
                 cfg.accum_iter, cfg.batch_size, spe, end, base_lr)

    raw_model = model
    probe = torch.randn(cfg.group_size, 3, cfg.img_size, cfg.img_size, device=dev,
                        generator=torch.Generator(dev).manual_seed(0))
    model = wrap_ddp(model, info, probe)
    if opts.compile:
        model = torch.compile(model)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    loader = DataLoader(dataset, batch_size=micro, sampler=sampler, drop_last=True,
                        num_workers=opts.num_workers, pin_memory=dev.type == "cuda",
                        persistent_workers=opts.num_workers > 0,
                        generator=torch.Generator().manual_seed(opts.seed))
    # masks come from the global RNG: different per rank, restored exactly on resume
    if rng is not None and len(rng) == info.world_size:
        ckpt.set_rng_state(rng[info.rank])
    else:
        if rng is not None and main:
            log.warning("checkpoint has RNG states for %d rank(s), running %d: masks will "
                        "differ from the original run", len(rng), info.world_size)
        torch.manual_seed(opts.seed + info.rank + 1_000_003 * step)

    logger = RunLogger(out_dir, step, end, main, opts.progress,
                       cfg.num_global_layers if cfg.attention == "topk" else 0,
                       homocon_floor(cfg))
    if source_probe is not None and step == 0:
        logger.log_probe(0, source_probe(raw_model))
    model.train()
    window, n_window, t0, last = 0.0, 0, time.perf_counter(), {}
    deadline = time.perf_counter() + opts.time_limit if opts.time_limit else math.inf
    done = step >= end
    try:
        while not done:
            epoch, within = divmod(step, spe)
            sampler.set_epoch(epoch, start=within * micro * cfg.accum_iter)
            batches = iter(loader)
            for _ in range(within, spe):
                lr = cosine_lr(step, base_lr, total, warmup, cfg.min_lr)
                set_lr(optimizer, lr)
                stats = train_step(model, batches, optimizer, cfg.accum_iter, dev, dtype, scaler)
                step += 1
                window, n_window = window + stats, n_window + 1
                logger.step()
                done = step >= end
                if step % opts.log_every == 0 or done or step % opts.save_every == 0:
                    late = float(time.perf_counter() > deadline)  # any rank late → all stop
                    *values, late = all_reduce_mean(torch.cat([
                        window / n_window, torch.tensor([late], device=dev)])).tolist()
                    if late > 0 and not done:
                        done = True
                        if main:
                            log.info("time limit of %gs reached at step %d", opts.time_limit,
                                     step)
                    if not math.isfinite(values[0]):
                        raise FloatingPointError(f"loss is {values[0]} at step {step}; stopping "
                                                 f"(last good checkpoint kept)")
                    img_s = n_window * cfg.batch_size / (time.perf_counter() - t0)
                    last = logger.log(step, epoch, values, lr, img_s)
                    window, n_window, t0 = 0.0, 0, time.perf_counter()
                if step % opts.save_every == 0 or done:
                    save(out_dir, raw_model, optimizer, scaler, cfg, step, spe, main)
                if source_probe is not None and (step % opts.probe_every == 0 or done):
                    logger.log_probe(step, source_probe(raw_model))
                if done:
                    break
    finally:
        logger.close()
    if main:
        log.info("done at step %d; checkpoint and weights in %s", step, out_dir)
    return PretrainResult(raw_model, step, last)


def save(out_dir: Path, model, optimizer, scaler, cfg, step: int, spe: int, main: bool) -> None:
    """Checkpoint + safetensors (rank 0 writes; every rank contributes its RNG state)."""
    rng = all_gather_object(ckpt.rng_state())
    if main:
        epoch, within = divmod(step, spe)
        ckpt.save_checkpoint(out_dir / ckpt.CHECKPOINT_NAME, model=model, optimizer=optimizer,
                             scaler=scaler, cfg=cfg, step=step, epoch=epoch,
                             step_in_epoch=within, rng=rng)
        ckpt.save_safetensors(out_dir / ckpt.WEIGHTS_NAME, model, cfg, step)


# ---- command line ----------------------------------------------------------------------------
_OVERRIDES = {  # flag → (config field, type)
    "model": str, "batch_size": int, "epochs": int, "warmup_epochs": int, "blr": float,
    "lr": float, "accum_iter": int, "mixing": str, "mix_ratio": float, "attention": str,
    "img_size": int, "patch_size": int, "mask_patch_size": int,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("mixedae pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mixedae_base", choices=sorted(PRESETS))
    for name, typ in _OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None,
                       help=f"override config.{name}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any PretrainConfig field (JSON value), repeatable")
    p.add_argument("--data", required=True, help="ImageFolder-style image folder")
    p.add_argument("--output-dir", default=None, help="default runs/<preset>")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop (with a checkpoint) after this many seconds of training")
    p.add_argument("--resume", default="auto", help="'auto', a checkpoint path, or 'none'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--probe-every", type=int, default=0,
                   help="source-identity probe at step 0 and every N steps (0: off)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return get_preset(args.preset, **overrides)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    for flag in ("save_every", "log_every"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    if args.probe_every < 0:
        raise ConfigError(f"--probe-every={args.probe_every} must be >= 0")
    return RunOptions(
        output_dir=args.output_dir or f"runs/{args.preset}", num_workers=args.num_workers,
        save_every=args.save_every, max_steps=args.max_steps, time_limit=args.time_limit,
        resume=None if args.resume in ("none", "") else args.resume, seed=args.seed,
        device=args.device, amp=args.amp, compile=args.compile, log_every=args.log_every,
        progress=not args.no_progress, probe_every=args.probe_every)


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    setup_logging(int(os.environ.get("RANK", 0)))
    try:  # every configuration problem surfaces here, before any training work
        cfg = config_from_args(args)
        opts = options_from_args(args)
        micro_batch_size(cfg, world)
        amp_dtype(opts.amp, torch.device("cpu"))
        ckpt.resolve_resume(opts.resume, opts.output_dir)
        dataset = build_pretrain_dataset(args.data, cfg.img_size, cfg.crop_scale)
        pretrain(cfg, dataset, opts)
    except (ConfigError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from mixedae.runtime.distributed import cleanup
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
