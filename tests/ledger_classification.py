"""Recipe ledger, classification: ImageNet fine-tuning (paper Tab. 5 / App. B, MAE FINETUNE.md
and main_finetune.py), linear probe (MAE FINETUNE.md "Linear Probing", main_linprobe.py),
k-NN (DINO eval_knn.py), 11-dataset transfer (paper App. B; Ericsson et al., ssl-transfer
finetune.py and datasets/). ``tests/classification/test_recipes_classification.py`` asserts the command
defaults against these rows (one getter per ``carrier``)."""
from recipe_ledger import Recipe

FT_B, FT_L = "ImageNet fine-tuning, ViT-B", "ImageNet fine-tuning, ViT-L"
FT = "ImageNet fine-tuning, both sizes"
LP, KNN, TR = "Linear probe (ImageNet)", "k-NN (DINO)", "11-dataset transfer (Table 2)"
T5 = "paper Tab. 5"
MAE_FT = "MAE FINETUNE.md (ViT-B script)"
MAE_FT_L = "MAE FINETUNE.md (ViT-L script)"
MAE_MAIN = "MAE main_finetune.py defaults"
MAE_LP = "MAE FINETUNE.md Linear Probing + main_linprobe.py"
DINO = "DINO eval_knn.py"
ERI = "Ericsson et al., ssl-transfer finetune.py"
APPB = "paper App. B (Downstream classification)"

ROWS = [
    # ---- ImageNet fine-tuning --------------------------------------------------------------
    Recipe(FT_B, "base learning rate", 5e-4, f"{T5}; {MAE_FT}", "finetune --blr (base)"),
    Recipe(FT_B, "batch size", 1024, f"{T5}; {MAE_FT} (32 per GPU x 32 GPUs)",
           "finetune --batch-size (base)"),
    Recipe(FT_B, "epochs", 100, f"{T5}; {MAE_FT}", "finetune --epochs (base)"),
    Recipe(FT_B, "layer-wise lr decay", 0.65, MAE_FT, "finetune --layer-decay (base)",
           "App. B sweeps {0.65, 0.7, 0.75}: --layer-decay-sweep paper"),
    Recipe(FT_B, "drop path", 0.1, f"{T5}; {MAE_FT}", "finetune --drop-path (base)"),
    Recipe(FT_L, "base learning rate", 1e-3, f"{T5}; {MAE_FT_L}", "finetune --blr (large)"),
    Recipe(FT_L, "batch size", 512, T5, "finetune --batch-size (large)",
           "MAE's ViT-L script runs 1024 (32 per GPU x 32 GPUs); the paper's Tab. 5 says 512"),
    Recipe(FT_L, "epochs", 50, f"{T5}; {MAE_FT_L}", "finetune --epochs (large)"),
    Recipe(FT_L, "layer-wise lr decay", 0.75, MAE_FT_L, "finetune --layer-decay (large)",
           "App. B sweeps {0.65, 0.7, 0.75}: --layer-decay-sweep paper"),
    Recipe(FT_L, "drop path", 0.1, T5, "finetune --drop-path (large)",
           "Tab. 5 sizes lr, batch and epochs (B)/(L) but lists one drop path: its literal "
           "reading is 0.1 for ViT-L too. MAE's ViT-L script uses 0.2 (--drop-path 0.2)"),
    Recipe(FT, "layer-decay sweep (the paper's protocol)", (0.65, 0.7, 0.75),
           "paper App. B (ImageNet classification)", "finetune --layer-decay-sweep paper"),
    Recipe(FT, "optimizer", "AdamW", T5, "finetune optimizer"),
    Recipe(FT, "optimizer momentum (betas)", (0.9, 0.999), T5, "finetune optimizer betas"),
    Recipe(FT, "weight decay", 0.05, f"{T5}; {MAE_FT}", "finetune --weight-decay"),
    Recipe(FT, "warm-up epochs", 5, f"{T5}; {MAE_MAIN}", "finetune --warmup-epochs"),
    Recipe(FT, "minimum lr (cosine end)", 1e-6, MAE_MAIN, "finetune --min-lr"),
    Recipe(FT, "RandAugment", "rand-m9-mstd0.5-inc1", f"{T5} RandAug (9, 0.5); {MAE_MAIN}",
           "finetune --aa"),
    Recipe(FT, "label smoothing", 0.1, f"{T5}; {MAE_MAIN}", "finetune --smoothing"),
    Recipe(FT, "mixup alpha", 0.8, f"{T5}; {MAE_FT}", "finetune --mixup"),
    Recipe(FT, "cutmix alpha", 1.0, f"{T5}; {MAE_FT}", "finetune --cutmix"),
    Recipe(FT, "mixup prob / switch prob", (1.0, 0.5), MAE_MAIN,
           "finetune --mixup-prob / --mixup-switch-prob"),
    Recipe(FT, "random erasing prob / mode / count", (0.25, "pixel", 1),
           f"{MAE_FT} (--reprob 0.25); {MAE_MAIN}", "finetune --reprob / --remode / --recount"),
    Recipe(FT, "gradient clipping", None, MAE_MAIN, "finetune --clip-grad"),
    Recipe(FT, "pooling", "avg", "paper §4.2 (average all patch tokens); MAE --global_pool",
           "finetune classifier global_pool"),
    Recipe(FT, "evaluation crop", "Resize 256 → CenterCrop 224 (crop_pct 0.875)",
           "MAE util/datasets.py build_transform", "finetune eval transform"),
    # ---- linear probe ----------------------------------------------------------------------
    Recipe(LP, "optimizer", "LARS", MAE_LP, "linprobe optimizer"),
    Recipe(LP, "base learning rate", 0.1, MAE_LP, "linprobe --blr"),
    Recipe(LP, "batch size", 16384, MAE_LP, "linprobe --batch-size"),
    Recipe(LP, "epochs", 90, f"{MAE_LP} (ViT-B)", "linprobe --epochs",
           "MAE: 'It is sufficient to train 50 epochs' for ViT-L/H; the default stays 90 for "
           "every size"),
    Recipe(LP, "warm-up epochs", 10, "MAE main_linprobe.py", "linprobe --warmup-epochs"),
    Recipe(LP, "weight decay", 0.0, MAE_LP, "linprobe --weight-decay"),
    Recipe(LP, "minimum lr", 0.0, "MAE main_linprobe.py", "linprobe --min-lr"),
    Recipe(LP, "feature", "cls", f"{MAE_LP} (--cls_token)", "linprobe --feature"),
    Recipe(LP, "evaluation crop pct", 0.875, "MAE main_linprobe.py (Resize 256 → crop 224)",
           "linprobe --eval-crop-pct"),
    # ---- k-NN ------------------------------------------------------------------------------
    Recipe(KNN, "k values scored", (10, 20, 100, 200), f"{DINO} (--nb_knn 10 20 100 200)",
           "knn --nb-knn", "one extraction and one search score every k; DINO's tables "
           "report the 20-NN row"),
    Recipe(KNN, "temperature", 0.07, DINO, "knn --temperature"),
    Recipe(KNN, "crop pct", 0.875, f"{DINO} (Resize 256 → CenterCrop 224, train and test)",
           "knn --eval-crop-pct"),
    # ---- 11-dataset transfer ---------------------------------------------------------------
    Recipe(TR, "iterations", 5000, f"{APPB}; {ERI} --steps", "transfer --iters"),
    Recipe(TR, "learning-rate grid", (1e-3, 3e-3, 1e-2, 3e-2), APPB, "transfer --lrs",
           "Ericsson et al. search logspace(-4, -1, 4) x weight decays; the paper fixes this "
           "grid and weight decay 0"),
    Recipe(TR, "weight decay", 0.0, APPB, "transfer --weight-decay"),
    Recipe(TR, "optimizer: SGD momentum / Nesterov", (0.9, True),
           f"{APPB} (SGD); {ERI} (momentum 0.9, nesterov=True)",
           "transfer --momentum / --nesterov"),
    Recipe(TR, "schedule warm-up", 0, f"{ERI} (CosineAnnealingLR, no warm-up)",
           "transfer --warmup-iters"),
    Recipe(TR, "batch size", 64, f"{ERI} --batch-size", "transfer --batch-size"),
    Recipe(TR, "test crop pct", 1.0, f"{ERI} (Resize 224 → CenterCrop 224)",
           "transfer --eval-crop-pct"),
    Recipe(TR, "lr-search validation", "official", f"{ERI} get_train_valid_loader (val split "
           "of Aircraft, DTD, Flowers, VOC2007)", "transfer --val-split"),
    Recipe(TR, "hold-out fraction", 0.2, f"{ERI} (valid_size 0.2)", "transfer --val-frac"),
    Recipe(TR, "hold-out draw", "shuffled", f"{ERI} (np.random.seed(0), shuffle, first "
           "floor(0.2 n) to val)", "transfer --holdout", "--holdout stratified: per class"),
    Recipe(TR, "hold-out seed", 0, f"{ERI} (random_seed=0)", "transfer --seed"),
    Recipe(TR, "VOC2007 difficult-only classes", "negative",
           "Ericsson et al., ssl-transfer datasets/voc2007.py (target == 1)",
           "transfer --voc-difficult", "--voc-difficult ignore: out of loss and AP"),
    Recipe(TR, "drop path", 0.1, "MAE fine-tuning ViT-B value (Ericsson et al. evaluate "
           "ResNet-50s; the paper does not state it)", "transfer --drop-path",
           "a reading: the paper fine-tunes the whole ViT as in Tab. 5"),
    Recipe(TR, "metric per dataset", "mean per-class: Aircraft, Caltech, Flowers, Pets; "
           "11-point mAP: VOC2007; top-1: the rest", f"{ERI} FINETUNE_DATASETS",
           "specs.SPECS[*].metric"),
]
