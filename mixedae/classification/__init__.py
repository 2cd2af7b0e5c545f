"""Classification evaluation of pretrained encoders: datasets, ImageNet fine-tuning and the
11-dataset transfer benchmark (``mixedae finetune`` / ``mixedae transfer``)."""
