"""mmseg's own tools/analysis_tools/browse_dataset.py (shipped in the mmseg package) runs
headless on ade_tiny with the project's config: one painted training sample per image."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mixedae.mm.smoke import tiny_seg_config

from conftest import REPO, data_dir


def test_browse_dataset_on_ade_tiny(tmp_path):
    import cv2
    import mmseg
    ade = data_dir("ade_tiny")
    tool = Path(mmseg.__file__).parent / ".mim/tools/analysis_tools/browse_dataset.py"
    assert tool.is_file(), tool
    cfg = tmp_path / "seg.py"
    tiny_seg_config(ade).dump(str(cfg))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(tool), str(cfg), "--output-dir", str(tmp_path / "out"),
                        "--not-show"], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, f"OpenCV {cv2.__version__}: " + (r.stdout + r.stderr)[-3000:]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(p.name for p in (ade / "images/training").glob("*.jpg"))
    for n in names:
        img = np.array(Image.open(tmp_path / "out" / n))
        h, w, c = img.shape   # a training sample: random resize, then a crop of at most 128
        assert c == 3 and 16 <= min(h, w) and max(h, w) <= 128 and img.std() > 5, (n, img.shape)
