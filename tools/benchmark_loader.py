#!/usr/bin/env python
"""Input-pipeline throughput (img/s): JPEG decode + RandomResizedCrop + flip + normalise.

Real JPEGs (``../shared/data/imagenet_tiny`` by default, repeated to fill the run), the
pretraining augmentation at 224², micro-batches from the pretraining engine's own stream
(``mixedae.pretrain.input_pipeline.pretrain_batches``: EpochStreamSampler keys, N worker
processes, images delivered on the device), for each ``decode`` option of ``mixedae pretrain``:

  cpu   PIL decode + torchvision transforms in the workers (``data.pretrain_transform``)
  gpu   workers read bytes only; decode_jpeg(device=cuda) + ``GPUAugment`` on the batch
        (with --device cpu the same code runs on CPU tensors: a correctness path, not a speed)

    python tools/benchmark_loader.py --paths cpu --workers 16 --seconds 20
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
import torch  # noqa: E402
from mixedae.pretrain.data import PretrainImages, list_images, pretrain_transform  # noqa: E402
from mixedae.pretrain.input_pipeline import pretrain_batches  # noqa: E402
from mixedae.runtime.sampler import EpochStreamSampler  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_tiny"


def run_loader(path: str, data: str | Path, workers: int, seconds: float, batch_size: int = 64,
               img_size: int = 224, device: str = "cuda", max_batches: int | None = None) -> dict:
    """Time one input path (``decode=path``) for ``seconds`` after one warm-up batch."""
    dev = torch.device(device)
    files = list_images(data)
    ds = PretrainImages(files * 1000, pretrain_transform(img_size))  # a tiny set, repeated
    batches = pretrain_batches(ds, EpochStreamSampler(len(ds)), decode=path, img_size=img_size,
                               scale=(0.2, 1.0), batch_size=batch_size, num_workers=workers,
                               device=dev, seed=0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, t0, out = 0, None, None
    for i, out in enumerate(batches):
        if i == 0:  # workers started, first batch through: start the clock
            sync()
            t0 = time.perf_counter()
            continue
        n += out.shape[0]
        if time.perf_counter() - t0 > seconds or (max_batches and i >= max_batches):
            break
    sync()
    dt = time.perf_counter() - t0
    del batches  # stops the workers
    assert out.shape[1:] == (3, img_size, img_size) and out.device.type == dev.type, out.shape
    return dict(part="loader", path=path, workers=workers, cpus=os.cpu_count(),
                device=dev.type, batch=batch_size, images=n, seconds=round(dt, 2),
                img_per_s=n / dt if dt > 0 else float("nan"), files=len(files))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--paths", default="cpu", help="comma list of cpu|gpu")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--max-batches", type=int, default=None, help="stop after N timed batches")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="append results as JSON lines to this file")
    args = ap.parse_args(argv)
    for p in args.paths.split(","):
        if p not in ("cpu", "gpu"):
            ap.error(f"--paths: unknown path {p!r} (cpu|gpu)")
    if not Path(args.data).is_dir():
        ap.error(f"--data {args.data} is not a folder of images")
    for p in args.paths.split(","):
        r = run_loader(p, args.data, args.workers, args.seconds, args.batch_size,
                       args.img_size, args.device, args.max_batches)
        print(f"loader {p:3s} ({r['device']}) {r['workers']} workers / {r['cpus']} cpus: "
              f"{r['img_per_s']:8.1f} img/s ({r['images']} images in {r['seconds']} s)",
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
