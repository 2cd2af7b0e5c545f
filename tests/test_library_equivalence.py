"""Where the project calls a library function instead of its own code, the two are equal."""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from mixedae.classification.datasets import eval_transform
from mixedae.model.pos_embed import resize_pos_embed
from mixedae.model.vit import relative_position_index


def test_pos_embed_resize_is_bicubic_without_antialias():
    pe = torch.randn(1, 1 + 14 * 14, 32, generator=torch.Generator().manual_seed(0))
    for new in [(16, 16), (10, 12), (7, 7)]:
        patch = pe[:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
        ref = F.interpolate(patch, size=new, mode="bicubic", align_corners=False)
        ref = torch.cat([pe[:, :1], ref.permute(0, 2, 3, 1).reshape(1, -1, 32)], 1)
        assert torch.equal(resize_pos_embed(pe, (14, 14), new, 1), ref)


def test_relative_position_index_is_beit_layout():
    h, w = 3, 5
    idx = relative_position_index((h, w))
    num = (2 * h - 1) * (2 * w - 1)
    coords = [(y, x) for y in range(h) for x in range(w)]
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            assert idx[i + 1, j + 1] == (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    assert (idx[0, 1:] == num).all() and (idx[1:, 0] == num + 1).all() and idx[0, 0] == num + 2


def test_eval_transforms_equal_torchvision_compositions():
    """crop_pct 0.875: ImageNet's Resize 256 → CenterCrop 224; crop_pct 1: the transfer
    protocol's Resize 224 → CenterCrop 224 (Ericsson et al.'s transform_no_aug)."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    for resize, crop_pct in ((256, 0.875), (224, 1.0)):
        ref = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                         T.CenterCrop(224), T.ToTensor(),
                         T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        assert torch.allclose(eval_transform(224, crop_pct)(img), ref(img), atol=1e-6)
