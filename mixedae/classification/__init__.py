"""Classification evaluation of pretrained encoders: ImageNet fine-tuning (``mixedae
finetune``), the 11-dataset transfer benchmark of Table 2 (``mixedae transfer``), linear probing
(``mixedae linprobe``) and k-NN (``mixedae knn``), on one engine and the shared runtime."""
