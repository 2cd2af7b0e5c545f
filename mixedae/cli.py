"""``mixedae`` console entry point: ``mixedae <command> [options]``.

Each command lives in its own module exposing ``main(argv: list[str]) -> int | None``; they
are imported lazily so that ``mixedae pretrain`` never imports an OpenMMLab package.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pretrain": ("mixedae.pretrain.command",
                 "MixedAE / MAE / baseline pretraining (torchrun for DDP)"),
    "demo": ("mixedae.pretrain.demo",
             "a few-minute CPU pretraining on photos shipped with packages"),
    "experiment": ("mixedae.pretrain.experiment",
                   "fig6: TopK accuracy and probe over the readings"),
    "convert": ("mixedae.convert", "convert checkpoints (pretrain → backbone / timm, MAE → ours)"),
    "finetune": ("mixedae.classification.finetune", "ImageNet-style fine-tuning"),
    "transfer": ("mixedae.classification.transfer",
                 "the 11-dataset classification transfer benchmark"),
    "report": ("mixedae.report.main",
               "one HTML/Markdown page: curves, attention maps, results vs paper"),
    "pipeline": ("mixedae.pipeline.main",
                 "pretrain → convert → transfers → report, resumable stages"),
    "linprobe": ("mixedae.classification.linprobe",
                 "linear probing of the frozen encoder (MAE recipe)"),
    "knn": ("mixedae.classification.knn", "weighted k-NN on frozen features (DINO protocol)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: mixedae <command> [options]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<10} {help_}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
