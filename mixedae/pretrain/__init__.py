"""Pretraining: the method configuration and presets, image data, the training engine, its
diagnostics (``probe``), the demo and the Fig. 6 experiment (``mixedae pretrain`` / ``mixedae
demo`` / ``mixedae experiment``)."""
