"""Issue 17 items 5 and 9, the one image loader (mixedae/runtime/images.py): a decompression
bomb is refused from its header (nothing decoded) and skipped like a corrupt file; the pixel
limit is an environment setting; EXIF orientation is applied only when asked."""
import logging
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from mixedae.pretrain.data import PretrainImages
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.images import (DEFAULT_MAX_PIXELS, ImageTooLarge, ReadableImageFolder,
                                    UnreadableImage, load_rgb, max_image_pixels)


def bomb_png(path, side=12000):
    """A side x side 1-bit grayscale PNG of zeros, written chunk by chunk (~20 KB on disk, a
    few MB of memory): 144 Mpx at 12000, between PIL's bomb warning (89 Mpx) and error."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row, parts = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8), []
    for _ in range(side // 100):
        parts.append(z.compress(row * 100))
    parts.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decode(monkeypatch):
    """Decoding a file (PIL's ImageFile.load) fails the test: the bomb must not be decoded."""
    from PIL import ImageFile

    def load(self):
        raise AssertionError(f"decoded {self.size}")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_bomb_is_refused_from_its_header(tmp_path, no_decode, monkeypatch):
    monkeypatch.delenv("MIXEDAE_MAX_IMAGE_PIXELS", raising=False)
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(bomb) as im:
        assert im.size == (12000, 12000)  # a real 144 Mpx PNG, in PIL's warning range
    t = time.perf_counter()
    with warnings.catch_warnings(), pytest.raises(ImageTooLarge, match=r"bomb\.png is too large: 12000x12000 = 144\.0 Mpx, "
                                            r"above the limit of 67\.1 Mpx .*MIXEDAE_MAX_IMAGE_PIXELS"):
        warnings.simplefilter("error")  # and no PIL warning on top of the one line
        load_rgb(bomb)
    assert time.perf_counter() - t < 1.0
    assert issubclass(ImageTooLarge, UnreadableImage)  # skipped like any unreadable file


def test_bomb_is_skipped_and_named_in_a_dataset(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("MIXEDAE_MAX_IMAGE_PIXELS", raising=False)
    folder = tmp_path / "data" / "cls"
    folder.mkdir(parents=True)
    bomb_png(folder / "0_bomb.png")
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(folder / "1_ok.png")
    with caplog.at_level(logging.WARNING):
        ds = ReadableImageFolder(tmp_path / "data")
        img, _ = ds[0]
    assert img.size == (8, 8)
    assert any("0_bomb.png is too large" in r.getMessage() for r in caplog.records)


def test_pixel_limit_is_an_environment_setting(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(p)
    monkeypatch.setenv("MIXEDAE_MAX_IMAGE_PIXELS", "5000")
    with pytest.raises(ImageTooLarge, match="100x100"):
        load_rgb(p)
    with pytest.raises(ConfigError, match="none of the 1 images"):  # an all-too-large dataset
        PretrainImages([p], transform=lambda x: x).require_readable()
    monkeypatch.setenv("MIXEDAE_MAX_IMAGE_PIXELS", "1e4")
    assert max_image_pixels() == 10_000 and load_rgb(p).size == (100, 100)
    monkeypatch.delenv("MIXEDAE_MAX_IMAGE_PIXELS")
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == 8192 * 8192
    for bad in ("0", "-5", "1.5", "inf", "nan", "many"):
        monkeypatch.setenv("MIXEDAE_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(ConfigError, match=f"MIXEDAE_MAX_IMAGE_PIXELS='{bad}'"):
            load_rgb(p)


def test_exif_orientation_only_when_asked(tmp_path):
    """A 20x10 JPEG, left half red / right half blue, tagged orientation 6 (shown turned 90°
    clockwise): as stored by default (MAE / torchvision), upright with ``exif_transpose``."""
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10, 0] = 255
    a[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "turned.jpg"
    Image.fromarray(a).save(p, quality=95, exif=exif)
    stored = load_rgb(p)
    assert stored.size == (20, 10)
    upright = np.asarray(load_rgb(p, exif_transpose=True)).astype(int)
    assert upright.shape == (20, 10, 3)  # the left column of the stored image is now on top
    assert upright[2, 5, 0] > 200 and upright[2, 5, 2] < 60
    assert upright[17, 5, 2] > 200 and upright[17, 5, 0] < 60
    # a loader with the option fixed at construction, as datasets take it
    from functools import partial
    ds = PretrainImages([p], transform=lambda x: x, loader=partial(load_rgb, exif_transpose=True))
    assert ds[0].size == (10, 20)
