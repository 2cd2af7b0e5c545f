#!/usr/bin/env python
"""Kernel-level profile of one pretraining step (torch.profiler), MAE vs MixedAE.

    python tools/profile_pretrain.py --presets mae_base,mixedae_base --batch-size 256
Prints the top CUDA (or CPU) ops by self time for each preset.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.environment import require_torch  # noqa: E402

require_torch(__file__)   # one line, not a traceback, outside the venv

from mixedae.runtime.cli import add_debug_flag, run_main  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from mixedae.pretrain.config import get_preset  # noqa: E402
from mixedae.model.mixed_autoencoder import MixedAutoencoder  # noqa: E402


def _main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="mae_base,mixedae_base")
    ap.add_argument("--model", default="base")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=25)
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    for preset in args.presets.split(","):
        cfg = get_preset(preset, model=args.model, batch_size=args.batch_size)
        model = MixedAutoencoder(cfg.model_config()).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        x = torch.randn(args.batch_size, 3, cfg.img_size, cfg.img_size, device=dev)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                out = model(x)
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                step()
            if cuda:
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"===== {preset} (2 steps) =====")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
        del model, opt


def main(argv=None) -> int:
    return run_main("tools/profile_pretrain.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
