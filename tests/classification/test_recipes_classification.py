"""The classification commands' defaults against the recipe ledger
(tests/ledger_classification.py): every row has a getter reading the value the code uses, and
a changed default fails naming the reference's value and source."""
from types import SimpleNamespace

import pytest
import torch

from mixedae.classification import finetune as F
from mixedae.classification import knn as K
from mixedae.classification import linprobe as LP
from mixedae.classification import transfer as T
from mixedae.classification.augment import build_transforms
from mixedae.classification.specs import SPECS

from ledger_classification import ROWS

ARGV = ["--data", "x", "--output-dir", "y"]


def ft(size: str = "base"):
    args = F.get_parser().parse_args([*ARGV, "--model", size])
    F.fill_defaults(args)
    return args


def ft_optimizer():
    args = ft("micro")
    args.img_size, args.patch_size = 32, 8
    _, _, opt, _ = F._build(args, SimpleNamespace(classes=["a", "b"]), torch.device("cpu"))
    return opt


def ft_model_pool():
    args = ft("micro")
    args.img_size, args.patch_size = 32, 8
    model, *_ = F._build(args, SimpleNamespace(classes=["a", "b"]), torch.device("cpu"))
    return model.global_pool


def eval_crop():
    resize, crop = build_transforms(ft())[1].transforms[:2]
    size = crop.size[0] if isinstance(crop.size, (tuple, list)) else crop.size
    return f"Resize {resize.size} → CenterCrop {size} (crop_pct {size / resize.size:g})"


def lp():
    return LP.get_parser().parse_args(ARGV)


def knn():
    return K.get_parser().parse_args(ARGV)


def tr():
    return T.get_parser().parse_args(["--root", "r", "--output-dir", "y"])


def voc_metric_text():
    groups = {"mean_per_class": [], "map11": [], "top1": []}
    for s in SPECS.values():
        groups[s.metric].append(s.column)
    assert sorted(groups["mean_per_class"]) == ["Aircraft", "Caltech", "Flowers", "Pets"]
    assert groups["map11"] == ["VOC"]
    return ("mean per-class: Aircraft, Caltech, Flowers, Pets; 11-point mAP: VOC2007; "
            "top-1: the rest")


GET = {
    "finetune --blr (base)": lambda: ft().blr,
    "finetune --batch-size (base)": lambda: ft().batch_size,
    "finetune --epochs (base)": lambda: ft().epochs,
    "finetune --layer-decay (base)": lambda: ft().layer_decay,
    "finetune --drop-path (base)": lambda: ft().drop_path,
    "finetune --blr (large)": lambda: ft("large").blr,
    "finetune --batch-size (large)": lambda: ft("large").batch_size,
    "finetune --epochs (large)": lambda: ft("large").epochs,
    "finetune --layer-decay (large)": lambda: ft("large").layer_decay,
    "finetune --drop-path (large)": lambda: ft("large").drop_path,
    "finetune --layer-decay-sweep paper": lambda: F.PAPER_LAYER_DECAY_SWEEP,
    "finetune optimizer": lambda: type(ft_optimizer()).__name__,
    "finetune optimizer betas": lambda: ft_optimizer().defaults["betas"],
    "finetune --weight-decay": lambda: ft().weight_decay,
    "finetune --warmup-epochs": lambda: ft().warmup_epochs,
    "finetune --min-lr": lambda: ft().min_lr,
    "finetune --aa": lambda: ft().aa,
    "finetune --smoothing": lambda: ft().smoothing,
    "finetune --mixup": lambda: ft().mixup,
    "finetune --cutmix": lambda: ft().cutmix,
    "finetune --mixup-prob / --mixup-switch-prob":
        lambda: (ft().mixup_prob, ft().mixup_switch_prob),
    "finetune --reprob / --remode / --recount": lambda: (ft().reprob, ft().remode,
                                                         ft().recount),
    "finetune --clip-grad": lambda: ft().clip_grad,
    "finetune classifier global_pool": ft_model_pool,
    "finetune eval transform": eval_crop,
    "linprobe optimizer": lambda: type(LP.build_lars(torch.nn.Linear(4, 2), 0.1)).__name__.upper(),
    "linprobe --blr": lambda: lp().blr,
    "linprobe --batch-size": lambda: lp().batch_size,
    "linprobe --epochs": lambda: lp().epochs,
    "linprobe --warmup-epochs": lambda: lp().warmup_epochs,
    "linprobe --weight-decay": lambda: lp().weight_decay,
    "linprobe --min-lr": lambda: lp().min_lr,
    "linprobe --feature": lambda: lp().feature,
    "linprobe --eval-crop-pct": lambda: lp().eval_crop_pct,
    "knn --nb-knn": lambda: tuple(knn().nb_knn),
    "knn --temperature": lambda: knn().temperature,
    "knn --eval-crop-pct": lambda: knn().eval_crop_pct,
    "transfer --iters": lambda: tr().iters,
    "transfer --lrs": lambda: tuple(T.parse_lrs(tr().lrs)),
    "transfer --weight-decay": lambda: tr().weight_decay,
    "transfer --momentum / --nesterov": lambda: (tr().momentum, tr().nesterov),
    "transfer --warmup-iters": lambda: tr().warmup_iters,
    "transfer --batch-size": lambda: tr().batch_size,
    "transfer --eval-crop-pct": lambda: tr().eval_crop_pct,
    "transfer --val-split": lambda: tr().val_split,
    "transfer --val-frac": lambda: tr().val_frac,
    "transfer --holdout": lambda: tr().holdout,
    "transfer --seed": lambda: tr().seed,
    "transfer --voc-difficult": lambda: tr().voc_difficult,
    "transfer --drop-path": lambda: tr().drop_path,
    "specs.SPECS[*].metric": voc_metric_text,
}


def test_every_row_has_a_getter():
    assert sorted({r.carrier for r in ROWS} - set(GET)) == []
    assert sorted(set(GET) - {r.carrier for r in ROWS}) == []


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.experiment}: {r.item}")
def test_default_is_the_reference_value(row, single_thread):
    got = GET[row.carrier]()
    assert got == row.value, (f"{row.experiment}, {row.item}: the code has {got!r} "
                              f"({row.carrier}); {row.source} says {row.value!r}")
