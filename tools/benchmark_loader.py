#!/usr/bin/env python
"""Input-pipeline throughput (img/s): JPEG decode + RandomResizedCrop + flip + normalise.

Real JPEGs (``../shared/data/imagenet_tiny`` by default, repeated to fill the run), the
pretraining augmentation at 224², batches from a DataLoader with N worker processes:

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

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.pretrain.data import build_pretrain_dataset, list_images  # noqa: E402
from mixedae.pretrain.gpu_augment import (EncodedImages, GPUAugment, collate_encoded,  # noqa: E402
                                          decode_batch)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_tiny"


class Repeated(torch.utils.data.Dataset):
    """``dataset`` repeated ``times`` (a tiny image set made long enough to time)."""

    def __init__(self, dataset, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self):
        return len(self.dataset) * self.times

    def __getitem__(self, i):
        return self.dataset[i % len(self.dataset)]


def run_loader(path: str, data: str | Path, workers: int, seconds: float, batch_size: int = 64,
               img_size: int = 224, device: str = "cuda", max_batches: int | None = None) -> dict:
    """Time one input path for ``seconds`` after one warm-up batch; returns a result row."""
    dev = torch.device(device)
    files = list_images(data)
    if path == "cpu":
        ds = build_pretrain_dataset(data, img_size)
        collate, finish = None, (lambda b: b.to(dev, non_blocking=True))
    else:
        ds, collate = EncodedImages(files), collate_encoded
        aug = GPUAugment(img_size)
        finish = lambda b: aug(decode_batch(b, dev))  # noqa: E731
    ds = Repeated(ds, 1000)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=collate, pin_memory=dev.type == "cuda" and path == "cpu",
                        drop_last=True, persistent_workers=False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n, t0, out = 0, None, None
    for i, batch in enumerate(loader):
        out = finish(batch)
        if i == 0:  # workers started, first batch through: start the clock
            sync()
            t0 = time.perf_counter()
            continue
        n += out.shape[0]
        if time.perf_counter() - t0 > seconds or (max_batches and i >= max_batches):
            break
    sync()
    dt = time.perf_counter() - t0
    assert out.shape[1:] == (3, img_size, img_size), out.shape
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
                       device=args.device)
        print(f"loader {p:3s} ({r['device']}) {r['workers']} workers / {r['cpus']} cpus: "
              f"{r['img_per_s']:8.1f} img/s ({r['images']} images in {r['seconds']} s)",
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
