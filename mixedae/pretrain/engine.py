"""The pretraining engine: MixedAE / MAE / baseline pretraining (Sec. 4.1, Appendix B Table 4).
Command line: :mod:`mixedae.pretrain.command` (``mixedae pretrain``).

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

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mixedae.model.attention.homologous import impl_unavailable
from mixedae.model.mixed_autoencoder import MixedAutoencoder
from mixedae.pretrain.config import PretrainConfig
from mixedae.pretrain.input_pipeline import file_sources, pretrain_batches
from mixedae.pretrain.probe import SourceProbe, homocon_floor
from mixedae.runtime import checkpoint as ckpt
from mixedae.runtime.atomic import atomic_write_text, remove_stale_temps
from mixedae.runtime.distributed import (DistInfo, all_gather_object, all_reduce_mean,
                                         init_distributed, wrap_ddp)
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.finite import FiniteGuard
from mixedae.runtime.optimizer_step import optimizer_step
from mixedae.runtime.precision import amp_dtype, autocast
from mixedae.runtime.run_logger import RunLogger
from mixedae.runtime.sampler import EpochStreamSampler
from mixedae.runtime.schedules import cosine_lr, set_lr
from mixedae.runtime.weights import CHECKPOINT_NAME

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
    max_bad_steps: int = 0          # non-finite steps skipped before stopping (runtime.finite)


@dataclass
class PretrainResult:
    model: torch.nn.Module          # unwrapped model (no DDP / compile)
    step: int
    metrics: dict                   # last logged metrics


# ---- the engine ------------------------------------------------------------------------------
@dataclass
class _Run:
    """Everything a pretraining run holds while it trains."""
    cfg: PretrainConfig
    opts: RunOptions
    info: DistInfo
    out_dir: Path
    micro: int
    spe: int                        # optimizer steps per epoch
    total: int                      # steps of the full schedule
    end: int                        # steps of this invocation (--max-steps)
    model: torch.nn.Module          # unwrapped
    optimizer: torch.optim.Optimizer
    scaler: object | None
    dtype: torch.dtype | None
    step: int = 0
    rng: list | None = None         # per-rank RNG states of the resumed checkpoint
    probe: SourceProbe | None = None
    guard: FiniteGuard | None = None


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    """AdamW (Tab. 4); no weight decay on ndim<=1 params, biases and ``model.no_weight_decay()``."""
    from timm.optim import param_groups_weight_decay
    groups = param_groups_weight_decay(model, cfg.weight_decay,
                                       no_weight_decay_list=model.no_weight_decay())
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.effective_lr(), betas=tuple(cfg.betas), fused=fused)


def train_step(model, batches, optimizer, accum_iter: int, device: torch.device,
               dtype: torch.dtype | None = None, scaler=None,
               apply: Callable[[], bool] = lambda: True) -> torch.Tensor:
    """One :func:`mixedae.runtime.optimizer_step.optimizer_step` on pretraining micro-batches
    (images, or (images, label) pairs) drawn from ``batches``. Returns the detached stats
    ``[loss, loss_recon, loss_homocon, *topk_acc]`` averaged over micro-batches."""
    def micro_step():
        imgs = next(batches)
        imgs = (imgs[0] if isinstance(imgs, (tuple, list)) else imgs).to(device, non_blocking=True)
        with autocast(device, dtype):
            out = model(imgs)
        return out["loss"], torch.cat([torch.stack([out["loss"], out["loss_recon"],
                                                    out["loss_homocon"]]).float(),
                                       out["topk_acc"].float().reshape(-1)])
    return optimizer_step(model, optimizer, accum_iter, micro_step, scaler=scaler, apply=apply)


def _build(cfg: PretrainConfig, dataset, opts: RunOptions, info: DistInfo) -> _Run:
    micro = cfg.micro_batch_size(info.world_size)
    if cfg.attention == "topk" and impl_unavailable(cfg.attn_impl, info.device):
        raise ConfigError(impl_unavailable(cfg.attn_impl, info.device))
    per_rank = -(-len(dataset) // info.world_size)
    spe = per_rank // (micro * cfg.accum_iter)
    if spe == 0:
        raise ConfigError(f"dataset has {len(dataset)} images, fewer than one global batch "
                          f"({cfg.batch_size}) of world size {info.world_size}: lower "
                          f"--batch-size (a multiple of 1/r={cfg.group_size} and of the world "
                          f"size, at most {len(dataset)})")
    total = int(round(cfg.epochs * spe))
    end = total if opts.max_steps is None else min(total, opts.max_steps)
    torch.manual_seed(opts.seed)  # identical initialisation on every rank
    model = MixedAutoencoder(cfg.model_config()).to(info.device)
    dtype = amp_dtype(opts.amp, info.device)
    return _Run(cfg, opts, info, Path(opts.output_dir), micro, spe, total, end, model,
                build_optimizer(model, cfg),
                torch.amp.GradScaler("cuda") if dtype == torch.float16 else None, dtype,
                guard=FiniteGuard(opts.max_bad_steps))


def _resume(run: _Run) -> None:
    path = ckpt.resolve_resume(run.opts.resume, run.out_dir)
    if path is None:
        return
    state = ckpt.load_checkpoint(path)
    ckpt.load_model_state(run.model, state["model"], source=str(path))
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.step, run.rng = state["step"], state["rng"]
    run.guard.bad_steps = int(state.get("bad_steps", 0))
    run.guard.saved(run.step, path)
    if run.info.is_main and path.parent.resolve() == run.out_dir.resolve():
        ckpt.repair_weights(path.parent, run.model, run.cfg, run.step)
    old = json.loads(state["config"])
    try:  # fields added since the checkpoint was written read as what that run did
        old = json.loads(PretrainConfig.from_dict(old).to_json())
    except (ConfigError, TypeError):
        pass
    diff = sorted(k for k, v in json.loads(run.cfg.to_json()).items() if old.get(k) != v)
    if run.info.is_main:
        if diff:
            log.warning("resuming %s with a changed config: %s", path, diff)
        log.info("resumed from %s at step %d", path, run.step)


def _announce(run: _Run, n_images: int) -> None:
    cfg, info = run.cfg, run.info
    if not info.is_main:
        return
    run.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run.out_dir)
    atomic_write_text(run.out_dir / "config.json",
                      json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")
    log.info("%d image(s), %d rank(s) × micro-batch %d × accum %d = batch %d; %d steps/epoch, "
             "%d steps (lr %.3g)", n_images, info.world_size, run.micro, cfg.accum_iter,
             cfg.batch_size, run.spe, run.end, cfg.effective_lr())
    if cfg.attention == "topk":
        log.info("homologous attention: K=%d, impl=%s, cls %s", cfg.topk, cfg.attn_impl,
                 cfg.homo_cls)


def _loader(run: _Run, dataset):
    """One batch stream (one DataLoader) for the whole run over the endless, resumable sample
    stream; ``cfg.decode`` picks the input pipeline (:mod:`.input_pipeline`)."""
    per_step = run.micro * run.cfg.accum_iter
    epoch, within = divmod(run.step, run.spe)
    sampler = EpochStreamSampler(len(dataset), seed=run.opts.seed, rank=run.info.rank,
                                 world=run.info.world_size, used=run.spe * per_step,
                                 start_epoch=epoch, start_offset=within * per_step)
    return pretrain_batches(dataset, sampler, decode=run.cfg.decode, img_size=run.cfg.img_size,
                            scale=run.cfg.crop_scale, batch_size=run.micro,
                            num_workers=run.opts.num_workers, device=run.info.device,
                            seed=run.opts.seed)


def _restore_rng(run: _Run) -> None:
    """Masks come from the global RNG: different per rank, restored exactly on resume."""
    info = run.info
    if run.rng is not None and len(run.rng) == info.world_size:
        ckpt.set_rng_state(run.rng[info.rank])
        return
    if run.rng is not None and info.is_main:
        log.warning("checkpoint has RNG states for %d rank(s), running %d: masks will differ "
                    "from the original run", len(run.rng), info.world_size)
    torch.manual_seed(run.opts.seed + info.rank + 1_000_003 * run.step)


def _wrap(run: _Run) -> torch.nn.Module:
    cfg, dev = run.cfg, run.info.device
    probe = torch.randn(cfg.group_size, 3, cfg.img_size, cfg.img_size, device=dev,
                        generator=torch.Generator(dev).manual_seed(0))
    model = wrap_ddp(run.model, run.info, probe)
    if run.opts.compile:
        model = torch.compile(model)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return model


def pretrain(cfg: PretrainConfig, dataset, opts: RunOptions,
             dist_info: DistInfo | None = None, probe_dataset=None) -> PretrainResult:
    """Pretrain ``MixedAutoencoder(cfg.model_config())`` on ``dataset`` (items: normalised
    (3,H,W) tensors, e.g. ``mixedae.pretrain.data.PretrainImages``). Resumes per
    ``opts.resume``. The probe (``opts.probe_every``) uses ``probe_dataset`` (default
    ``dataset``)."""
    cfg.validate()
    if cfg.decode == "gpu":
        file_sources(dataset)  # in-memory images cannot take the gpu path (before the model)
    run = _build(cfg, dataset, opts, dist_info or init_distributed(opts.device))
    if opts.probe_every and run.info.is_main:
        run.probe = SourceProbe(cfg, probe_dataset or dataset, run.info.device,
                                opts.probe_images, opts.seed)
    _resume(run)
    _announce(run, len(dataset))
    model = _wrap(run)
    batches = _loader(run, dataset)
    _restore_rng(run)
    logger = RunLogger(run.out_dir if run.info.is_main else None, desc="pretrain",
                       total=run.end, start_step=run.step, progress=opts.progress)
    try:
        last = _train(run, model, batches, logger)
    finally:
        logger.close()
        del batches
    if run.info.is_main:
        log.info("done at step %d; checkpoint and weights in %s", run.step, run.out_dir)
    return PretrainResult(run.model, run.step, last)


def _train(run: _Run, model, batches, logger: RunLogger) -> dict:
    cfg, opts, dev = run.cfg, run.opts, run.info.device
    warmup, base_lr = cfg.warmup_epochs * run.spe, cfg.effective_lr()
    deadline = time.perf_counter() + opts.time_limit if opts.time_limit else math.inf
    window, n_window, t0, last = 0.0, 0, time.perf_counter(), {}
    if run.probe is not None and run.step == 0:
        _log_probe(run, logger)
    model.train()
    done = run.step >= run.end
    while not done:
        lr = cosine_lr(run.step, base_lr, run.total, warmup, cfg.min_lr)
        set_lr(run.optimizer, lr)
        stats = train_step(model, batches, run.optimizer, cfg.accum_iter, dev, run.dtype,
                           run.scaler, lambda: run.guard.step_ok(run.optimizer, run.step + 1))
        run.step += 1
        window, n_window = window + stats, n_window + 1
        logger.step()
        done = run.step >= run.end
        if run.step % opts.log_every == 0 or done or run.step % opts.save_every == 0:
            late = float(time.perf_counter() > deadline)  # any rank late → all stop
            *values, late = all_reduce_mean(torch.cat([
                window / n_window, torch.tensor([late], device=dev)])).tolist()
            if late > 0 and not done:
                done = True
                if run.info.is_main:
                    log.info("time limit of %gs reached at step %d", opts.time_limit, run.step)
            if not math.isfinite(values[0]):
                run.guard.stop(run.step, f"loss is {values[0]}")
            img_s = n_window * cfg.batch_size / (time.perf_counter() - t0)
            last = _log_step(run, logger, values, lr, img_s)
            window, n_window, t0 = 0.0, 0, time.perf_counter()
        if run.step % opts.save_every == 0 or done:
            save(run)
        if run.probe is not None and (run.step % opts.probe_every == 0 or done):
            _log_probe(run, logger)
    return last


def _log_probe(run: _Run, logger: RunLogger) -> None:
    """A probe result: console, its own log.jsonl line, tensorboard ``probe/*``."""
    values = run.probe(run.model)
    log.info("step %d: source-identity probe %s", run.step,
             ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    logger.log(dict(step=run.step, **values), {f"probe/{k}": v for k, v in values.items()})


def _log_step(run: _Run, logger: RunLogger, values: list[float], lr: float,
              img_s: float) -> dict:
    loss, rec, homo, *acc = values
    record = dict(step=run.step, epoch=run.step // run.spe, loss=loss, loss_recon=rec,
                  loss_homocon=homo, lr=lr, topk_acc=acc, img_per_s=img_s,
                  bad_steps=run.guard.bad_steps)
    floor = homocon_floor(run.cfg)
    if floor:
        record["homocon_ratio"] = homo / floor
    offset = run.cfg.num_global_layers if run.cfg.attention == "topk" else 0
    scalars = {k: record[k] for k in ("loss", "loss_recon", "loss_homocon", "homocon_ratio",
                                      "lr", "img_per_s") if k in record}
    scalars.update({f"topk_acc/layer_{i + offset}": a for i, a in enumerate(acc)})
    postfix = dict(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}")
    if floor:
        postfix["homocon/floor"] = f"{record['homocon_ratio']:.3f}"
    logger.log(record, scalars, postfix=postfix)
    return record


def save(run: _Run) -> None:
    """Checkpoint + safetensors as one pair (rank 0 writes; every rank gives its RNG state),
    only of finite weights and optimizer state (``FiniteGuard.check_state``)."""
    run.guard.check_state(run.optimizer, run.step)
    rng = all_gather_object(ckpt.rng_state())
    if run.info.is_main:
        epoch, within = divmod(run.step, run.spe)
        ckpt.save_run(run.out_dir, model=run.model, optimizer=run.optimizer, scaler=run.scaler,
                      cfg=run.cfg, step=run.step, epoch=epoch, step_in_epoch=within, rng=rng,
                      extra={"bad_steps": run.guard.bad_steps})
    run.guard.saved(run.step, run.out_dir / CHECKPOINT_NAME)
