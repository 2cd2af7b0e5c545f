"""Machinery shared by every engine (pretraining, fine-tuning, transfer, OpenMMLab glue):
errors, torch.distributed helpers, atomic checkpoints and RNG state, the one weight loader,
samplers, learning-rate schedules, the layer-decay rule and run logging. Nothing here knows
the paper's method; nothing here imports an OpenMMLab package."""
