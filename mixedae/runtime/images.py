"""The one image-loading path of every engine: decode fully, convert any mode to 8-bit RGB.

* grayscale, CMYK, palette (with transparency) and RGBA become RGB;
* 16-bit / 32-bit integer images (PNG ``I;16``, ``I;16B``, ``I``) are scaled to 8 bit by
  their bit depth (PIL's ``convert("RGB")`` would clip them, turning most of a 16-bit
  image white); float images (``F``) are taken as [0, 1] when their maximum is <= 1, else
  as 8-bit values;
* an image that cannot be decoded raises :class:`UnreadableImage` naming the file.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

_INT_DEPTH = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32}


class UnreadableImage(OSError):
    """An image file that cannot be decoded (message names the file and the cause)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (see module docstring)."""
    if img.mode in _INT_DEPTH or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        elif img.mode == "I" and a.max(initial=0) < 2 ** 16:
            scale = 255.0 / 65535.0  # PNG 16-bit often decodes as mode I
        else:
            scale = 255.0 / (2 ** _INT_DEPTH[img.mode] - 1)
        img = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(src: Any) -> Image.Image:
    """A path, a PIL image or an HxW[xC] uint8 array → fully decoded RGB image."""
    if isinstance(src, np.ndarray):
        return to_rgb(Image.fromarray(src))
    if isinstance(src, Image.Image):
        return to_rgb(src)
    try:
        with Image.open(src) as im:
            im.load()
            return to_rgb(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UnreadableImage(f"unreadable image {src} ({type(e).__name__}: {msg})") from None
