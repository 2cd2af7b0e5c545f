#!/usr/bin/env python
"""Unpack the official ADE20K scene-parsing archive into the layout the configs expect.

    python tools/prepare_ade20k.py [--src data/ADEChallengeData2016.zip] [--out data/ade]

``--src`` is ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/) or an
already extracted ADEChallengeData2016 folder (linked, not copied). Result:
``data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}`` (20,210 / 2,000
pairs in the full release; labels 0 = other/ignore, 1..150 classes, which the configs map with
``reduce_zero_label=True``). The layout and image/annotation pairing are checked.
"""
import argparse
import os
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixedae.runtime.cli import add_debug_flag, run_main  # noqa: E402

NAME = "ADEChallengeData2016"
FULL = {"training": 20210, "validation": 2000}


def check_layout(root: Path) -> dict:
    counts = {}
    for split in ("training", "validation"):
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise SystemExit(f"error: missing folder {d} (not an {NAME} layout)")
        imgs = {p.stem for p in img_dir.glob("*.jpg")}
        anns = {p.stem for p in ann_dir.glob("*.png")}
        if not imgs:
            raise SystemExit(f"error: no .jpg images in {img_dir}")
        if imgs != anns:
            odd = sorted(imgs ^ anns)[:3]
            raise SystemExit(f"error: {split}: images and annotations differ, e.g. {odd}")
        counts[split] = len(imgs)
    return counts


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=f"data/{NAME}.zip", help="the .zip or an extracted folder")
    ap.add_argument("--out", default="data/ade", help=f"parent folder of {NAME}")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    dst = out / NAME
    if not src.exists():
        print(f"error: {src} not found: download {NAME}.zip from "
              f"http://data.csail.mit.edu/places/ADEchallenge/ and pass --src", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        print(f"{dst} exists; checking it")
    elif src.is_dir():
        root = src / NAME if (src / NAME).is_dir() else src
        check_layout(root)
        os.symlink(root.resolve(), dst, target_is_directory=True)
        print(f"linked {dst} -> {root.resolve()}")
    else:
        if not zipfile.is_zipfile(src):
            print(f"error: {src} is not a zip archive", file=sys.stderr)
            return 1
        with zipfile.ZipFile(src) as z:
            names = z.namelist()
            if not any(n.startswith(f"{NAME}/") for n in names):
                print(f"error: {src} has no top-level {NAME}/ folder", file=sys.stderr)
                return 1
            for n in names:   # refuse path traversal
                target = (out / n).resolve()
                if not str(target).startswith(str(out.resolve()) + os.sep):
                    print(f"error: unsafe path in archive: {n}", file=sys.stderr)
                    return 1
            z.extractall(out)
        print(f"extracted {src} -> {dst}")
    counts = check_layout(dst)
    note = "" if counts == FULL else f" (the full release has {FULL})"
    print(f"ok: {dst}: {counts['training']} training / {counts['validation']} validation "
          f"pairs{note}")
    return 0


def main(argv=None) -> int:
    return run_main("tools/prepare_ade20k.py", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
