"""The one image-loading path of every engine: decode fully, convert any mode to 8-bit RGB.

* grayscale, CMYK, palette (with transparency) and RGBA become RGB;
* 16-bit / 32-bit integer images (PNG ``I;16``, ``I;16B``, ``I``) are scaled to 8 bit by
  their bit depth (PIL's ``convert("RGB")`` would clip them, turning most of a 16-bit
  image white); float images (``F``) are taken as [0, 1] when their maximum is <= 1, else
  as 8-bit values;
* an image that cannot be decoded raises :class:`UnreadableImage` naming the file;
* an image larger than ``MIXEDAE_MAX_IMAGE_PIXELS`` (default 8192 × 8192 = 67 Mpx, far above
  any training image of ImageNet / COCO / ADE20K / the 11 datasets, below PIL's 89 Mpx bomb
  warning) is refused from its header before anything is decoded (:class:`ImageTooLarge`, an
  :class:`UnreadableImage`: skipped and named like a corrupt file), so a small decompression
  bomb (a 12000 × 12000 PNG of 140 KB) costs no decode. PIL's own error above 179 Mpx stays;
* EXIF orientation is ignored by default, as MAE and torchvision do (pixels as stored);
  ``exif_transpose=True`` (fixed by whoever builds the loader, e.g.
  ``functools.partial(load_rgb, exif_transpose=True)`` as a dataset's ``loader``) applies
  ``PIL.ImageOps.exif_transpose`` first;
* training sets use :func:`load_readable`: an unreadable file is named once (a warning) and
  replaced by the next readable one, so a run never dies of one bad file; an all-bad dataset
  is refused up front by :func:`require_readable` (before any model is built), which also
  names every listed file that does not exist;
* evaluation sets are never altered: :func:`check_eval_set` decodes every image up front and
  refuses the set naming the unreadable ones (first few and the count), or, when the caller's
  explicit flag asks for it, drops them and says how many (the caller records the count);
  an evaluation dataset then loads strictly (:func:`load_eval`: no substitute, ever).
"""
from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps
from torchvision.datasets import ImageFolder

from mixedae.runtime.errors import ConfigError, format_names

log = logging.getLogger(__name__)

_INT_DEPTH = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32}
MAX_PIXELS_ENV = "MIXEDAE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192


class UnreadableImage(OSError):
    """An image file that cannot be decoded (message names the file and the cause)."""


class ImageTooLarge(UnreadableImage):
    """An image file above the pixel limit (refused from its header, nothing decoded)."""


def max_image_pixels() -> int:
    """The pixel limit of :func:`load_rgb`: ``MIXEDAE_MAX_IMAGE_PIXELS`` (default 8192²)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value.is_integer()):
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive whole number of pixels")
    return int(value)


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


def load_rgb(src: Any, *, max_pixels: int | None = None,
             exif_transpose: bool = False) -> Image.Image:
    """A path, a PIL image or an HxW[xC] uint8 array → fully decoded RGB image. A file above
    ``max_pixels`` (default :func:`max_image_pixels`) is refused before decoding;
    ``exif_transpose``: turn it as its EXIF orientation says (see module docstring)."""
    if isinstance(src, np.ndarray):
        return to_rgb(Image.fromarray(src))
    if isinstance(src, Image.Image):
        return to_rgb(ImageOps.exif_transpose(src) if exif_transpose else src)
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():  # the limit below is ours; PIL's error above 2x stays
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(src)  # lazy: reads the header only
        with im:
            w, h = im.size
            if w * h > limit:
                raise ImageTooLarge(
                    f"image {src} is too large: {w}x{h} = {w * h / 1e6:.1f} Mpx, above the limit "
                    f"of {limit / 1e6:.1f} Mpx (not decoded; set {MAX_PIXELS_ENV} to raise it)")
            im.load()
            return to_rgb(ImageOps.exif_transpose(im) if exif_transpose else im)
    except ImageTooLarge:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UnreadableImage(f"unreadable image {src} ({type(e).__name__}: {msg})") from None


def load_readable(sources: Sequence, index: int, reported: set | None = None,
                  loader: Callable = load_rgb) -> tuple[int, Image.Image]:
    """``(j, image)``: the first source from ``index`` on (wrapping around) that decodes.
    Each unreadable file is logged once per ``reported`` set; ConfigError if none decodes."""
    n = len(sources)
    for i in range(n):
        j = (index + i) % n
        try:
            return j, loader(sources[j])
        except OSError as e:  # UnreadableImage, or a loader's own I/O error
            if reported is None or str(sources[j]) not in reported:
                if reported is not None:
                    reported.add(str(sources[j]))
                log.warning("skipping %s", e)
    raise ConfigError(f"none of the {n} images can be read (first: {sources[0]})")


def require_readable(sources: Sequence, what: str, loader: Callable = load_rgb,
                     reported: set | None = None) -> None:
    """Refuse (ConfigError naming ``what``) a dataset none of whose images decodes; stops at
    the first readable image (usually the first one). Listed files that do not exist are
    named (first few and the count) in one warning: a training set substitutes them. Pass
    the dataset's ``reported`` set so that a bad file is not named twice."""
    if len(sources) == 0:
        raise ConfigError(f"{what}: no images")
    absent = [str(x) for x in sources if isinstance(x, (str, os.PathLike))
              and not os.path.isfile(x)]
    if absent:
        log.warning("%s: %d of %d listed files do not exist (replaced by readable ones in "
                    "training): %s", what, len(absent), len(sources),
                    format_names(absent, 5, sort=False))
    try:
        load_readable(sources, 0, set() if reported is None else reported, loader)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None


def load_eval(src: Any, loader: Callable = load_rgb) -> Image.Image:
    """An evaluation image: decoded or :class:`UnreadableImage`, never a substitute."""
    return loader(src)


def unreadable(sources: Sequence, loader: Callable = load_rgb,
               workers: int | None = None) -> list[tuple[int, str]]:
    """``[(index, reason)]`` of every source that does not decode (every image fully
    decoded, files in threads: PIL decodes without the GIL); arrays are always readable."""
    idx = [i for i, x in enumerate(sources) if not isinstance(x, np.ndarray)]

    def why(i: int) -> str | None:
        try:
            loader(sources[i])
            return None
        except OSError as e:  # UnreadableImage, or a missing file
            return str(e)
    with ThreadPoolExecutor(max(1, workers or min(8, os.cpu_count() or 1))) as pool:
        reasons = list(pool.map(why, idx))
    return [(i, r) for i, r in zip(idx, reasons) if r is not None]


def check_eval_set(sources: Sequence, what: str, skip: bool = False, flag: str = "",
                   loader: Callable = load_rgb, workers: int | None = None) -> list[int]:
    """Evaluation sets are never altered. Every image of ``sources`` decodes: all indices.
    Otherwise ConfigError naming the unreadable files (first few and the count) and ``flag``
    (the caller's option to skip them), or, with ``skip``, the indices of the readable ones
    (the caller records how many were left out)."""
    bad = unreadable(sources, loader, workers)
    if not bad:
        return list(range(len(sources)))
    files = format_names([str(sources[i]) for i, _ in bad], 5, sort=False)
    if not skip:
        raise ConfigError(f"{what}: {len(bad)} of {len(sources)} evaluation images cannot be "
                          f"read ({files}); an evaluation set is never altered: fix or "
                          f"remove them" + (f", or pass {flag} to evaluate without them "
                                            f"(recorded in the results)" if flag else ""))
    log.warning("%s: %d unreadable evaluation images left out (%s): %s", what, len(bad), flag,
                files)
    drop = {i for i, _ in bad}
    return [i for i in range(len(sources)) if i not in drop]


class ReadableImageFolder(ImageFolder):
    """torchvision ``ImageFolder`` through the one image loader. A training folder skips (and
    names) unreadable files like every other dataset; a folder none of whose images can be
    read is refused at construction (ConfigError naming it). An evaluation folder
    (``eval_flag``: the option that skips unreadable images) is checked image by image
    (:func:`check_eval_set`); ``skipped`` lists the files it left out."""

    def __init__(self, root, transform: Callable | None = None, eval_flag: str | None = None,
                 skip_unreadable: bool = False, workers: int | None = None):
        super().__init__(str(root), transform=transform, loader=load_rgb)
        self.paths, self._reported, self.skipped = [p for p, _ in self.samples], set(), []
        self.strict = eval_flag is not None
        if not self.strict:
            require_readable(self.paths, f"image folder {root}", reported=self._reported)
            return
        if not self.paths:
            raise ConfigError(f"image folder {root}: no images")
        keep = check_eval_set(self.paths, f"image folder {root}", skip_unreadable, eval_flag,
                              workers=workers)
        if len(keep) < len(self.paths):
            kept = set(keep)
            self.skipped = [p for i, p in enumerate(self.paths) if i not in kept]
            self.samples = [self.samples[i] for i in keep]
            self.imgs, self.targets = self.samples, [self.targets[i] for i in keep]
            self.paths = [self.paths[i] for i in keep]
            if not self.paths:
                raise ConfigError(f"image folder {root}: none of its images can be read")

    def __getitem__(self, i: int):
        if self.strict:
            img = load_eval(self.paths[i])
        else:
            i, img = load_readable(self.paths, i, self._reported)
        return (img if self.transform is None else self.transform(img)), self.targets[i]
