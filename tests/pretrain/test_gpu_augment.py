"""The batched decode + augmentation path (mixedae.pretrain.gpu_augment) run on CPU tensors:
crop statistics and the fallback against torchvision's RandomResizedCrop, flip rate, pixels,
normalisation, JPEG decode of real images (grayscale included)."""
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import transforms

from conftest import data_dir
from mixedae.pretrain.data import list_images
from mixedae.pretrain.gpu_augment import EncodedImages, GPUAugment, crop_params, decode_batch


def test_crop_params_follow_torchvision_statistics():
    g = torch.Generator().manual_seed(0)
    n, (H, W) = 4000, (375, 500)
    t, l, h, w = crop_params(torch.tensor([[H, W]] * n), generator=g).double().unbind(1)
    assert (t >= 0).all() and (l >= 0).all() and (t + h <= H).all() and (l + w <= W).all()
    area, ratio = h * w / (H * W), w / h
    assert area.min() > 0.19 and area.max() <= 1.0
    assert ratio.min() > 0.74 and ratio.max() < 1.35
    torch.manual_seed(0)
    ref = torch.tensor([transforms.RandomResizedCrop.get_params(
        torch.empty(1, H, W), (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]).double()
    ref_area, ref_ratio = ref[:, 2] * ref[:, 3] / (H * W), ref[:, 3] / ref[:, 2]
    for ours, theirs in ((area, ref_area), (ratio, ref_ratio), (t / (H - h + 1), ref[:, 0] /
                                                                (H - ref[:, 2] + 1))):
        assert abs(ours.mean() - theirs.mean()) < 0.02
        assert abs(ours.std() - theirs.std()) < 0.02


def test_crop_fallback_is_torchvisions_central_crop():
    for H, W in ((10, 1000), (1000, 10)):
        box = crop_params(torch.tensor([[H, W]])).tolist()[0]
        torch.manual_seed(0)
        ref = transforms.RandomResizedCrop.get_params(torch.empty(1, H, W), (0.2, 1.0),
                                                      (3 / 4, 4 / 3))
        assert box == list(ref)


def test_flip_rate_shapes_pixels_and_normalisation():
    aug = GPUAugment(16)
    g = torch.Generator().manual_seed(1)
    _, flips = aug.params([torch.zeros(3, 20, 30)] * 4000, generator=g)
    assert abs(flips.float().mean().item() - 0.5) < 0.04
    # a horizontal ramp, full-image box: flipped output is the mirrored unflipped one
    ramp = torch.arange(32.0).expand(3, 32, 32).mul(8).to(torch.uint8)
    box = torch.tensor([[0, 0, 32, 32]] * 2)
    out = aug.apply([ramp, ramp], box, torch.tensor([False, True]))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[1], out[0].flip(-1))
    assert (out[0, :, :, 1:] > out[0, :, :, :-1]).all()
    # same pixels as torchvision's bicubic antialiased resized crop of that box
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g)
    box = torch.tensor([[5, 7, 30, 24]])
    got = aug.apply([img], box, torch.tensor([False]))[0]
    ref = TF.resized_crop(img.float(), 5, 7, 30, 24, [16, 16],
                          interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(got, (ref.clamp(0, 255) / 255 - mean) / std, atol=1e-4, rtol=0)
    grey = (mean * 255).expand(3, 8, 8).round().to(torch.uint8)   # the mean colour → ~0
    assert aug([grey]).abs().max() < 0.02


def test_decode_batch_matches_pil_on_real_jpegs():
    files = [f for f in list_images(data_dir("imagenet_tiny")) if f.lower().endswith(".jpeg")]
    gray = [f for f in files if Image.open(f).mode == "L"][:1]
    files = files[:3] + gray
    ds = EncodedImages(files)
    imgs = decode_batch([ds[i] for i in range(len(ds))], "cpu")
    for f, img in zip(files, imgs):
        pil = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
        assert img.shape == pil.shape and img.dtype == torch.uint8
        assert (img.float() - pil.float()).abs().mean() < 2.0   # libjpeg IDCT variants
    out = GPUAugment(32)(imgs, generator=torch.Generator().manual_seed(0))
    assert out.shape == (len(files), 3, 32, 32) and torch.isfinite(out).all()
    assert -2.2 < out.min() and out.max() < 2.7                 # ImageNet-normalised range
