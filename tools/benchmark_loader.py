#!/usr/bin/env python
"""Input-pipeline throughput (img/s, and per core): JPEG decode + RandomResizedCrop + flip +
normalise.

Real JPEGs (``../shared/data/imagenet_tiny`` by default, repeated to fill the run), the
pretraining augmentation at 224², micro-batches from the pretraining engine's own stream
(``mixedae.pretrain.input_pipeline.pretrain_batches``: EpochStreamSampler keys, N worker
processes, images delivered on the device), for each path:

  cpu-pil  the --decode cpu path before uint8 crops, kept here as the baseline: PIL decode,
           PIL bicubic crop, ToTensor + Normalize in the workers (float batches)
  cpu      --decode cpu: decode.decode_file (TorchCodec / torchvision.io) + torchvision's uint8
           crop in the workers, uint8 batches normalised on the device
  gpu      --decode gpu: workers read bytes only; decode_jpegs(device) + ``GPUAugment`` on the
           batch (with --device cpu the same code runs on CPU tensors: a correctness path)

Each row names the library that decoded, img/s, img/s per worker core (workers 0: the main
process, one core) and images per CPU-second of the main process and its workers together
(from /proc: the per-core rate whatever else the machine runs). ``--pixels N`` also compares the cpu and cpu-pil crops of N images under
the same per-sample seeds (mean / max absolute difference in grey levels).

    python tools/benchmark_loader.py --paths cpu-pil,cpu --workers 1 --seconds 20 --pixels 100
    python tools/benchmark_loader.py --paths gpu --workers 4 --seconds 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv

from mixedae.runtime.cli import add_debug_flag, run_main  # noqa: E402
import torch  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402
from torchvision import transforms  # noqa: E402
from mixedae.pretrain.data import PretrainImages, list_images, pretrain_transform  # noqa: E402
from mixedae.pretrain.decode import jpeg_library  # noqa: E402
from mixedae.pretrain.input_pipeline import pretrain_batches  # noqa: E402
from mixedae.runtime.images import load_rgb  # noqa: E402
from mixedae.runtime.sampler import EpochStreamSampler, SeededSample  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_tiny"
PATHS = ("cpu-pil", "cpu", "gpu")


def pil_transform(img_size: int, scale=(0.2, 1.0), normalise: bool = True):
    """The --decode cpu augmentation before uint8 crops (the baseline): PIL all the way."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=tuple(scale),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip()] + ([
            transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN,
                                                        IMAGENET_DEFAULT_STD)]
            if normalise else [transforms.PILToTensor()]))


def dataset(path: str, files: list, img_size: int) -> PretrainImages:
    if path == "cpu-pil":
        return PretrainImages(files, pil_transform(img_size), loader=load_rgb)
    return PretrainImages(files, pretrain_transform(img_size))


def cpu_seconds() -> float | None:
    """CPU seconds used so far by this process and its live children (the DataLoader
    workers), from /proc (None where there is none): images per CPU-second is the per-core
    rate whatever else the machine runs, the main process's share included."""
    try:
        tick, me = os.sysconf("SC_CLK_TCK"), os.getpid()
        total = time.process_time()
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        st = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(st[1]) == me:  # fields after the name: state, ppid, ..., utime, stime
                    total += (int(st[11]) + int(st[12])) / tick
        return total
    except (OSError, ValueError, AttributeError):
        return None


def decoder(path: str, device: str) -> str:
    return "PIL" if path == "cpu-pil" else f"{jpeg_library()} on " \
        f"{'cpu' if path == 'cpu' else torch.device(device).type}"


def pixel_difference(data: str | Path, n: int = 100, img_size: int = 224) -> dict:
    """cpu vs cpu-pil crops of the first ``n`` files under the same seeds (grey levels)."""
    files = list_images(data)[:n]
    new = SeededSample(PretrainImages(files, pretrain_transform(img_size)).crops())
    old = SeededSample(PretrainImages(files, pil_transform(img_size, normalise=False),
                                      loader=load_rgb))
    d = torch.stack([(new[(i, i)].float() - old[(i, i)].float()).abs().flatten()
                     for i in range(len(files))])
    return dict(part="loader", path="cpu vs cpu-pil pixels", images=len(files),
                mean_abs_diff=d.mean().item(), max_abs_diff=d.max().item(),
                frac_diff_gt_2=(d > 2).float().mean().item())


def run_loader(path: str, data: str | Path, workers: int, seconds: float, batch_size: int = 64,
               img_size: int = 224, device: str = "cuda", max_batches: int | None = None) -> dict:
    """Time one input path (``decode=path``) for ``seconds`` after one warm-up batch."""
    dev = torch.device(device)
    files = list_images(data)
    ds = dataset(path, files * 1000, img_size)  # a tiny set, repeated
    batches = pretrain_batches(ds, EpochStreamSampler(len(ds)), decode=path[:3],
                               img_size=img_size,
                               scale=(0.2, 1.0), batch_size=batch_size, num_workers=workers,
                               device=dev, seed=0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, t0, out = 0, None, None
    for i, out in enumerate(batches):
        if i == 0:  # workers started, first batch through: start the clock
            sync()
            t0, c0 = time.perf_counter(), cpu_seconds()
            continue
        n += out.shape[0]
        if time.perf_counter() - t0 > seconds or (max_batches and i >= max_batches):
            break
    sync()
    dt, cpu = time.perf_counter() - t0, cpu_seconds()
    cpu = cpu - c0 if cpu is not None and c0 is not None else None
    del batches  # stops the workers
    assert out.shape[1:] == (3, img_size, img_size) and out.device.type == dev.type, out.shape
    ips = n / dt if dt > 0 else float("nan")
    return dict(part="loader", path=path, decoder=decoder(path, device), workers=workers,
                cpus=os.cpu_count(), device=dev.type, batch=batch_size, images=n,
                seconds=round(dt, 2), img_per_s=ips, img_per_s_per_core=ips / max(1, workers),
                cpu_s=cpu, img_per_cpu_s=n / cpu if cpu else None,
                files=len(files))


def _main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--paths", default="cpu-pil,cpu", help="comma list of " + "|".join(PATHS))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--max-batches", type=int, default=None, help="stop after N timed batches")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pixels", type=int, default=0,
                    help="also compare the cpu and cpu-pil crops of this many images")
    ap.add_argument("--json", help="append results as JSON lines to this file")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    for p in args.paths.split(","):
        if p not in PATHS:
            ap.error(f"--paths: unknown path {p!r} ({'|'.join(PATHS)})")
    if not Path(args.data).is_dir():
        ap.error(f"--data {args.data} is not a folder of images")
    rows = {}
    for p in args.paths.split(","):
        r = rows[p] = run_loader(p, args.data, args.workers, args.seconds, args.batch_size,
                                 args.img_size, args.device, args.max_batches)
        if p == "cpu" and "cpu-pil" in rows:
            base = rows["cpu-pil"]
            r["per_core_vs_cpu_pil"] = r["img_per_s_per_core"] / base["img_per_s_per_core"]
            if r["img_per_cpu_s"] and base["img_per_cpu_s"]:
                r["per_cpu_s_vs_cpu_pil"] = r["img_per_cpu_s"] / base["img_per_cpu_s"]
        print(f"loader {p:7s} [{r['decoder']}] ({r['device']}) {r['workers']} workers / "
              f"{r['cpus']} cpus: {r['img_per_s']:8.1f} img/s, {r['img_per_s_per_core']:7.1f} "
              f"per worker core, " + (f"{r['img_per_cpu_s']:6.1f} per CPU-second "
                                      if r["img_per_cpu_s"] else "") +
              f"({r['images']} images in {r['seconds']} s)" +
              (f"; {r['per_core_vs_cpu_pil']:.2f}x cpu-pil per worker core"
               if "per_core_vs_cpu_pil" in r else "") +
              (f", {r['per_cpu_s_vs_cpu_pil']:.2f}x per CPU-second"
               if "per_cpu_s_vs_cpu_pil" in r else ""), flush=True)
        _append(args.json, r)
    if args.pixels:
        r = pixel_difference(args.data, args.pixels, args.img_size)
        print(f"pixels  cpu vs cpu-pil, {r['images']} images: mean |diff| "
              f"{r['mean_abs_diff']:.3f}, max {r['max_abs_diff']:.0f} grey levels, "
              f"{r['frac_diff_gt_2']:.2e} of values differ by > 2", flush=True)
        _append(args.json, r)


def _append(path, row):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv=None) -> int:
    return run_main("tools/benchmark_loader.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
