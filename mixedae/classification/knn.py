"""``mixedae knn``: weighted k-nearest-neighbour classification on frozen features (DINO's
protocol).

Features are the frozen ViT's ``--feature`` (``cls``: the cls token after the pretrained final
norm; ``avg``: the mean patch token → unit LayerNorm) on Resize 256 → CenterCrop 224 images,
L2-normalised. For every test image the ``k`` training images of highest cosine similarity
``s`` vote for their class with weight ``exp(s / T)`` (T = 0.07); the class with the largest
vote wins (top-5: the five largest). Several k are scored in one run from one feature
extraction and one similarity search (the top max-k neighbours, cut to each k):
``--nb-knn``, default 10 20 100 200 with T 0.07, the defaults of DINO's ``eval_knn.py``
(``--k`` is the older name of the flag). Multi-label data (VOC) vote with their label vectors
and are scored by mAP on the votes.

Features are extracted once per data and split and cached atomically in
``OUT/<name>/features/{train,test}.pt`` (:mod:`mixedae.classification.features`; an
interrupted extraction resumes from its last piece, a cache made by another checkpoint or
transform is recomputed), so other ``--nb-knn`` / ``--temperature`` values cost seconds. Under
torchrun the extraction and the test set are sharded over the ranks.

Data: ``--data DIR`` (ImageFolder, ImageNet layout) or ``--datasets NAMES --root ROOT`` (the 11
transfer datasets, train → test). Outputs per data ``OUT/<name>/``: ``result.json`` (every
metric of every k, ``by_k``), per k ``k<k>/`` with its ``result.json``, ``per_class.csv`` and
``confusion.csv/png``, and ``log.jsonl``, ``tb/``; over all data of the run ``OUT/results.md``
/ ``.csv`` with one row per k, rewritten after every data and on every exit. Every
``result.json`` records ``pretrained``: the :mod:`mixedae.runtime.provenance` record of the
``--checkpoint`` file (null without one).

Examples::

    torchrun --nproc_per_node 8 -m mixedae.cli knn --data /data/imagenet \\
        --checkpoint work/mixedae_b1600 --output-dir work/knn_b1600
    mixedae knn --datasets all --root /data/transfer --checkpoint work/mixedae_b1600 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from mixedae.classification import cli_common
from mixedae.classification import datasets
from mixedae.classification import engine
from mixedae.classification import results
from mixedae.classification.evaluation import multilabel_stats, single_label_stats
from mixedae.classification.features import cached_features, images_digest
from mixedae.model.vit import create_vit
from mixedae.runtime.atomic import atomic_write_text
from mixedae.runtime.cli import check_flags, run_main
from mixedae.runtime.distributed import get_rank, get_world_size, is_main_process
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.provenance import pretrained_record
from mixedae.runtime.run_logger import RunLogger, print0
from mixedae.runtime.weights import resolve_checkpoint_path


DINO_NB_KNN = (10, 20, 100, 200)  # facebookresearch/dino eval_knn.py, --nb_knn default


def get_parser() -> argparse.ArgumentParser:
    p = cli_common.frozen_eval_parser("mixedae knn", __doc__)
    p.add_argument("--nb-knn", "--k", dest="nb_knn", type=int, nargs="+",
                   default=list(DINO_NB_KNN), metavar="K",
                   help="numbers of neighbours, each scored (default: DINO's "
                   + " ".join(map(str, DINO_NB_KNN)) + ")")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--batch-size", type=int, default=256, help="per-rank extraction batch")
    p.add_argument("--eval-crop-pct", type=float, default=0.875)
    p.add_argument("--chunk", type=int, default=50_000, help="images per cached piece")
    p.add_argument("--seed", type=int, default=0, help="only for seeded dataset splits")
    cli_common.add_workers_arg(p)
    cli_common.add_run_flags(p)
    return p


def check_args(args) -> list[str] | None:
    check_flags(args, {"temperature": ">0", "batch_size": ">0", "eval_crop_pct": "(0,1]",
                         "chunk": ">0", "seed": ">=0"})
    for k in args.nb_knn:
        check_flags(argparse.Namespace(nb_knn=k), {"nb_knn": ">0"})
    args.nb_knn = list(dict.fromkeys(args.nb_knn))  # each k once, in the order given
    cli_common.resolve_model_args(args)
    cli_common.resolve_workers(args, "knn")
    args.name = cli_common.run_name(args)
    return cli_common.check_data_args(args)


def feature_key(args, images) -> dict:
    """What the cached features depend on."""
    ck = resolve_checkpoint_path(args.checkpoint) if args.checkpoint else None
    return {"checkpoint": str(ck) if ck else None,
            "checkpoint_stat": [ck.stat().st_size, ck.stat().st_mtime_ns] if ck else None,
            "model": args.model, "patch_size": args.patch_size, "img_size": args.img_size,
            "feature": args.feature, "eval_crop_pct": args.eval_crop_pct,
            "amp": not args.no_amp, "n": len(images), "images": images_digest(images),
            "seed": None if args.checkpoint else args.seed}


def knn_votes(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
              k: int | Sequence[int], temperature: float, num_classes: int,
              chunk: int = 512) -> torch.Tensor | dict[int, torch.Tensor]:
    """(M, C) weighted votes: Σ over the k most cosine-similar training rows of
    ``exp(sim / T)`` × their label (class index → one-hot; or a multi-label 0/1 row).
    ``train`` and ``test`` are L2-normalised. With several ``k`` (a sequence): ``{k: votes}``
    from one search for the max-k neighbours (sorted by similarity, cut to each k)."""
    ks = [k] if isinstance(k, int) else list(k)
    out = {k_: [] for k_ in ks}
    multilabel = train_labels.ndim == 2
    for i in range(0, len(test), chunk):
        sims, idxs = (test[i:i + chunk] @ train.T).topk(max(ks), dim=1)
        for k_ in ks:
            w, idx = (sims[:, :k_] / temperature).exp(), idxs[:, :k_]
            if multilabel:
                out[k_].append((w[..., None] * train_labels[idx]).sum(dim=1))
            else:
                votes = torch.zeros(len(idx), num_classes, dtype=w.dtype, device=w.device)
                out[k_].append(votes.scatter_add_(1, train_labels[idx], w))
    res = {k_: torch.cat(v) if v else torch.zeros(0, num_classes) for k_, v in out.items()}
    return res[k] if isinstance(k, int) else res


def _features(args, data: datasets.ClsData, model, ds_dir: Path, device, logger) -> list:
    tf = datasets.eval_transform(args.img_size, args.eval_crop_pct)
    out = []
    for split, images in (("train", data.train_images), ("test", data.test_images)):
        f = cached_features(model, data.dataset(split, tf), ds_dir / "features" / f"{split}.pt",
                            feature_key(args, images), batch_size=args.batch_size,
                            device=device, workers=args.workers, amp=not args.no_amp,
                            chunk=args.chunk, logger=logger)
        out.append(torch.nn.functional.normalize(f.float(), dim=1))
    return out


def _targets(targets: list, multilabel: bool) -> torch.Tensor:
    if multilabel:  # IGNORE (difficult) stays in test targets: it is not scored
        return torch.stack([torch.as_tensor(t, dtype=torch.float32) for t in targets])
    return torch.as_tensor(targets, dtype=torch.int64)


def knn_dataset(args, data: datasets.ClsData, out_dir: Path, device) -> dict:
    """Features (cached), k-NN votes for every k on this rank's test share, every metric;
    the summaries ``{k: summary}``."""
    ds_dir = out_dir / data.name
    if max(args.nb_knn) > len(data.train_targets):
        raise ConfigError(f"--nb-knn {max(args.nb_knn)} is larger than the "
                          f"{len(data.train_targets)} training images of {data.name}")
    torch.manual_seed(args.seed)  # a random-init baseline is reproducible
    model = create_vit(args.model, patch_size=args.patch_size, img_size=args.img_size,
                       num_classes=0, global_pool="token" if args.feature == "cls" else "avg")
    loaded = engine.load_pretrained(model, args.checkpoint) if args.checkpoint else None
    pretrained = pretrained_record(args.checkpoint) if is_main_process() else None
    n_img = len(data.train_images) + len(data.test_images)
    logger = RunLogger(ds_dir, desc=f"knn {data.name} features",
                       total=-(-n_img // get_world_size()), progress=not args.no_progress)
    if loaded:
        logger.info(f"[knn] {loaded['line']}")
    t0, evs = time.time(), {}
    try:
        train, test = _features(args, data, model.to(device), ds_dir, device, logger)
        t_feat = time.time() - t0
        mine = slice(get_rank(), None, get_world_size())
        y_train = _targets(data.train_targets, data.multilabel).clamp(min=0).to(device)
        y_test = _targets(data.test_targets, data.multilabel)[mine]
        votes = knn_votes(train.to(device), y_train, test[mine].to(device), args.nb_knn,
                          args.temperature, data.num_classes)
        for k, v in votes.items():
            v = v.float().cpu()
            evs[k] = ev = (multilabel_stats(v, y_test) if data.multilabel else
                           single_label_stats(v, y_test, data.num_classes, device,
                                              with_loss=False))
            logger.log({"event": "knn", "step": 0, "k": k, "T": args.temperature,
                        "feature_seconds": round(t_feat, 2), **results.public_eval(ev)},
                       {f"knn_k{k}/{m}": x for m, x in results.public_eval(ev).items() if m != "n"})
    finally:
        logger.close()
    print0(f"[knn] {data.name}: {results.SHORT[data.metric]} " + ", ".join(
        f"k {k} {ev[data.metric]:.2f}" for k, ev in evs.items()) + f" (T {args.temperature}; "
        f"features {t_feat:.0f}s, all {time.time() - t0:.0f}s)")
    out = {k: cli_common.save_result(ds_dir / f"k{k}", data, ev, args.name, method="knn", k=k,
                            temperature=args.temperature, feature=args.feature,
                            pretrained=pretrained)
           for k, ev in evs.items()}
    if is_main_process():
        atomic_write_text(ds_dir / "result.json", json.dumps(
            {"dataset": data.name, "method": "knn", "temperature": args.temperature,
             "feature": args.feature, "metric": data.metric, "nb_knn": args.nb_knn,
             "by_k": {str(k): s for k, s in out.items()}, "pretrained": pretrained}, indent=1))
    return out


def write_tables(args, done: list[dict], note: str | None) -> Path | None:
    """OUT/results.md / .csv of the data of this invocation (votes are recomputed every run):
    one row per k."""
    if not done:
        return None
    rows = {f"{args.name} k={k}": {s[k]["dataset"]: s[k] for s in done} for k in args.nb_knn}
    return results.write_row_tables(Path(args.output_dir), args.name, rows,
                              f"k-NN (k {', '.join(map(str, args.nb_knn))}, T "
                              f"{args.temperature}, {args.feature} feature)", note=note)[1]


def main(argv: list[str] | None = None) -> int:
    return run_main("mixedae knn", _main, argv)


def _main(argv: list[str]) -> int:
    return cli_common.parse_and_run(get_parser, check_args, knn_dataset, write_tables, argv)


if __name__ == "__main__":
    sys.exit(main())
