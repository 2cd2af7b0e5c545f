"""Recipe ledger, pretraining section: every paper value of the pretraining presets.

``carrier`` is ``<preset>.<field>`` (a ``PretrainConfig`` field or property), which
``test_recipes_pretrain.py`` reads with ``getattr(get_preset(preset), field)`` and compares with
``value``; the effect of each field is tested in ``test_pretrain_effects.py``.
"""
from __future__ import annotations

from recipe_ledger import Recipe

_B = "Pretraining, MixedAE ViT-B/16 (mixedae_base; Tab. 1, 4)"
_F = "Pretraining, MixedAE-Full / -Full* ViT-B/16 (mixedae_base_full, mixedae_base_full_light; Tab. 1)"
_L = "Pretraining, MixedAE ViT-L/16 (mixedae_large, mixedae_large_full; Tab. 6, App. C)"
_A = "Pretraining, baselines and ablations (Tab. 3, 7; Sec. 4.4)"
_S = "Pretraining, segment-embedding reading per preset (App. B; Tab. 3f, 7a-7c)"


def _rows(exp: str, preset: str, items) -> list[Recipe]:
    return [Recipe(exp, item, value, source, f"{preset}.{field}", *note)
            for item, value, source, field, *note in items]


_METHOD = [
    ("encoder", "base", "Sec. 4.1: standard ViT-Base", "model"),
    ("input resolution", 224, "Sec. 4.1: 224×224", "img_size"),
    ("patch size", 16, "Sec. 4.1: 16×16, L = 196", "patch_size"),
    ("sequence length L", 196, "Sec. 4.1", "num_patches"),
    ("mixing mode", "compose", "Sec. 3.2, App. B: compose by default", "mixing"),
    ("mixing ratio r", 0.25, "Sec. 4.1, Tab. 3a", "mix_ratio"),
    ("images per group 1/r", 4, "Eq. 1 with r = 0.25", "group_size"),
    ("mask patch size", 32, "App. B: 32×32 (following MixMIM, SimMIM)", "mask_patch_size"),
    ("attention", "topk", "Eq. 6: homologous attention", "attention"),
    ("TopK threshold K = rL", 49, "Sec. 4.1: K = 0.25 L; Tab. 3d", "topk",
     "round(0.25 · 196); topk_ratio None means r"),
    ("global self-attention layers", 1, "Sec. 3.2: all but the very first layer; Tab. 3e",
     "num_global_layers"),
    ("homologous contrastive loss", True, "Eq. 7, Tab. 3f", "homo_con"),
    ("λ (HomoCon weight)", 0.1, "Sec. 3.3, Eq. 8", "homo_con_weight"),
    ("τ (temperature)", 0.25, "Sec. 4.1", "homo_con_tau"),
    ("projector output dim", 128, "Sec. 4.1: linear projector to 128", "homo_con_dim"),
    ("segment embedding", "residual", "App. B: sine-cosine, added to the input of each "
     "Transformer layer", "seg_embed_mode"),
    ("decoder depth", 8, "Sec. 4.1: 8 layers (MAE)", "decoder_depth"),
    ("decoder width", 512, "Sec. 4.1: hidden dim 512 (MAE)", "decoder_dim"),
    ("decoder heads", 16, "MAE (models_mae.py: decoder_num_heads=16)", "decoder_heads",
     "not stated in the paper; MAE's value"),
    ("reconstruction target", True, "Tab. 4, App. B: normalized pixels (MAE)", "norm_pix_loss"),
]
_OPTIM = [
    ("batch size", 4096, "Tab. 4 (B), Sec. 4.1: compose", "batch_size"),
    ("base learning rate", 7.5e-5, "Tab. 4, Sec. 4.1: lr = blr · bs / 256", "blr"),
    ("learning rate", 7.5e-5 * 4096 / 256, "Tab. 4: blr · bs / 256", "effective_lr"),
    ("weight decay", 0.05, "Tab. 4", "weight_decay"),
    ("AdamW betas", (0.9, 0.95), "Tab. 4", "betas"),
    ("warmup epochs", 40, "Tab. 4, Sec. 4.1", "warmup_epochs"),
    ("epochs", 300, "Tab. 1 (300 / 800 / 1600 rows; the preset is the 300-epoch row)", "epochs",
     "--epochs 800 / 1600 for the other Tab. 1 rows"),
    ("minimum lr", 0.0, "MAE (cosine to 0); Tab. 4 'cosine decay'", "min_lr",
     "not stated in the paper; MAE's value"),
    ("RandomResizedCrop scale", (0.2, 1.0), "Tab. 4 RandomResizedCrop; MAE's scale (0.2, 1)",
     "crop_scale", "the scale is MAE's (the paper: 'the remaining hyperparameters ... same "
     "with MAE')"),
]

ROWS: list[Recipe] = [
    *_rows(_B, "mixedae_base", _METHOD + _OPTIM),
    # full mode (Tab. 1): batch 1024, everything else as compose
    *_rows(_F, "mixedae_base_full", [
        ("mixing mode", "full", "Sec. 3.2: 1/r mixed samples per group", "mixing"),
        ("batch size", 1024, "Sec. 4.1: 1024 for the full mode", "batch_size"),
        ("base learning rate", 7.5e-5, "Tab. 4", "blr"),
        ("decoder", (8, 512), "Sec. 4.1", "decoder_depth, decoder_dim"),
        ("segment embedding", "residual", "App. B", "seg_embed_mode"),
    ]),
    *_rows(_F, "mixedae_base_full_light", [
        ("mixing mode", "full", "Tab. 1 MixedAE-Full*", "mixing"),
        ("batch size", 1024, "Sec. 4.1", "batch_size"),
        ("light decoder depth", 2, "Sec. 4.1: 2 layers (fair comparison with BEiT)",
         "decoder_depth"),
        ("light decoder width", 256, "Sec. 4.1: hidden dim 256", "decoder_dim"),
        ("light decoder heads", 8, "not stated; MAE's 32-d heads at width 256",
         "decoder_heads", "reading: head dim of MAE's decoder (512 / 16)"),
        ("segment embedding", "residual", "App. B", "seg_embed_mode"),
    ]),
    *_rows(_L, "mixedae_large", [
        ("encoder", "large", "App. C: standard ViT-Large", "model"),
        ("batch size", 2048, "Tab. 4 (L)", "batch_size"),
        ("base learning rate", 7.5e-5, "App. C: same recipe as ViT-B", "blr"),
        ("epochs", 1600, "App. C, Tab. 6 (the 1600-epoch row; --epochs 1500 for the other)",
         "epochs"),
        ("warmup epochs", 40, "App. C: same recipe as ViT-B", "warmup_epochs"),
        ("segment embedding", "residual", "App. B", "seg_embed_mode"),
    ]),
    *_rows(_L, "mixedae_large_full", [
        ("encoder", "large", "App. C", "model"),
        ("mixing mode", "full", "Sec. 3.2", "mixing"),
        ("batch size", 1024, "Sec. 4.1: 1024 for the full mode", "batch_size",
         "not a paper row: the paper has no ViT-L full-mode run; full-mode batch of Sec. 4.1"),
        ("epochs", 1600, "App. C", "epochs"),
        ("segment embedding", "residual", "App. B", "seg_embed_mode"),
    ]),
    # baselines and ablations: 300 epochs, blr 1.5e-4, compose (Sec. 4.4)
    *[r for name, items in (
        ("mae_base", [("method", "none", "Tab. 1 MAE: random masking", "mixing"),
                      ("mask ratio 1 - r", 0.25, "MAE: 75 % masking", "mix_ratio"),
                      ("attention", "global", "MAE", "attention"),
                      ("base learning rate", 1.5e-4, "MAE (Tab. 1 baseline)", "blr"),
                      ("HomoCon", False, "MAE", "homo_con")]),
        ("mae_large", [("encoder", "large", "Tab. 6 MAE baseline", "model"),
                       ("epochs", 1600, "Tab. 6", "epochs")]),
        ("naive_mix_base", [("mixing", "compose", "Sec. 3.1 naive baseline, Tab. 3f row 1",
                             "mixing"),
                            ("attention", "global", "Tab. 3f: no HomoAtt", "attention"),
                            ("HomoCon", False, "Tab. 3f: no HomoCon", "homo_con"),
                            ("base learning rate", 1.5e-4, "Sec. 4.4", "blr")]),
        ("mix_masked_sa_base", [("attention", "masked", "Tab. 7a: self-attention within "
                                 "homologous patches", "attention"),
                                ("HomoCon", False, "Tab. 7a", "homo_con"),
                                ("base learning rate", 1.5e-4, "App. C: MAE's recipe", "blr")]),
        ("homo_att_only_base", [("attention", "topk", "Tab. 3f row 2", "attention"),
                                ("HomoCon", False, "Tab. 3f row 2", "homo_con"),
                                ("base learning rate", 1.5e-4, "Sec. 4.4", "blr")]),
        ("homo_con_only_base", [("attention", "global", "Tab. 3f row 3", "attention"),
                                ("HomoCon", True, "Tab. 3f row 3", "homo_con"),
                                ("base learning rate", 1.5e-4, "Sec. 4.4", "blr")]),
        ("mixedae_no_seg_base", [("base learning rate", 1.5e-4, "Sec. 4.4", "blr")]),
        ("mixedae_seg_residual_base", [("base learning rate", 1.5e-4, "Sec. 4.4", "blr")]),
        ("mae_homocon_base", [("mixing", "none", "Tab. 7c row 2: MAE + HomoCon", "mixing"),
                              ("HomoCon", True, "Tab. 7c row 2", "homo_con"),
                              ("HomoCon group size", 4, "App. C: groups of 4", "group_size"),
                              ("base learning rate", 1.5e-4, "Sec. 4.4", "blr")]),
        ) for r in _rows(_A, name, items)],
    *[Recipe(_A, "epochs", 300, "Sec. 4.4: 300-epoch pretraining for all ablations",
             f"{name}.epochs")
      for name in ("mae_base", "naive_mix_base", "mix_masked_sa_base", "homo_att_only_base",
                   "homo_con_only_base", "mixedae_no_seg_base", "mixedae_seg_residual_base",
                   "mae_homocon_base")],
    # the segment embedding, per preset, with the reading
    *[Recipe(_S, f"segment embedding of {name}", mode, source, f"{name}.seg_embed_mode", note)
      for name, mode, source, note in (
          ("mixedae_base", "residual", "App. B", "added to the input of every block"),
          ("mixedae_base_full", "residual", "App. B", ""),
          ("mixedae_base_full_light", "residual", "App. B", ""),
          ("mixedae_large", "residual", "App. B, App. C (same recipe)", ""),
          ("mixedae_large_full", "residual", "App. B", ""),
          ("mae_base", "none", "MAE has none", ""),
          ("mae_large", "none", "MAE has none", ""),
          ("naive_mix_base", "none", "Sec. 3.1 (before Sec. 3.2 introduces it); Tab. 3f row 1, "
           "Tab. 7a 'Naive'", "reading: the naive baseline has no homologous recognition, of "
           "which the segment embedding is part (Sec. 3.2)"),
          ("mix_masked_sa_base", "none", "Tab. 7a: 'without homologous recognition'",
           "reading: as the naive baseline plus masked self-attention"),
          ("homo_att_only_base", "residual", "Sec. 3.2; Tab. 3f row 2",
           "reading: Tab. 3f varies HomoAtt / HomoCon only; the segment embedding is part of "
           "homologous recognition"),
          ("homo_con_only_base", "residual", "Sec. 3.2; Tab. 3f row 3", "reading, as row 2"),
          ("mixedae_no_seg_base", "none", "Tab. 7c row 1 (Mixing yes, SE no)", ""),
          ("mixedae_seg_residual_base", "residual", "Tab. 7c row 3, Tab. 3f row 4", ""),
          ("mae_homocon_base", "residual", "Tab. 7c row 2 (Mixing no, SE yes)",
           "each image's code is that of its place in its group of 4"),
          ("mixedae_tiny", "residual", "App. B (paper default; demo and tests)", ""),
          ("mixedae_cpu", "residual", "App. B (paper default; the README's CPU command)",
           "not a paper row"),
          ("mae_tiny", "none", "MAE has none", "not a paper row"),
      )],
]
