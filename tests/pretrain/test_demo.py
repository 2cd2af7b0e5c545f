"""``mixedae demo`` end to end in reduced form (few steps, micro model)."""
import json

import pytest

pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

from mixedae.pretrain import demo  # noqa: E402
from mixedae.runtime.checkpoint import load_checkpoint  # noqa: E402
from mixedae.runtime.torch_files import read_safetensors  # noqa: E402


def test_demo_writes_pngs_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = demo.main(["--steps", "4", "--model", "micro", "--batch-size", "8",
                    "--output-dir", str(out)])
    assert rc == 0
    for name in ("reconstructions.png", "curves.png", "checkpoint.pth", "model.safetensors"):
        assert (out / name).stat().st_size > 1000, name
    assert load_checkpoint(out / "checkpoint.pth")["step"] == 4
    assert read_safetensors(out / "model.safetensors")[1]["step"] == "4"
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 4
    printed = capsys.readouterr().out
    assert str(out / "reconstructions.png") in printed and "TopK acc" in printed


def test_packaged_photos_are_real_rgb():
    photos = demo.packaged_photos()
    assert len(photos) >= 4 and {"astronaut", "china"} & set(photos)
    assert all(p.mode == "RGB" and min(p.size) >= 128 for p in photos.values())
