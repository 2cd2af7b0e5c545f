"""Pretraining: the method configuration and presets, image data, the training engine and the
demo (``mixedae pretrain`` / ``mixedae demo``)."""
