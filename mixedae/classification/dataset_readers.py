"""Readers of the 11 downstream datasets from their official on-disk layouts (through the
torchvision class that exists for each; ``download=False`` always). Layouts, splits and metrics
are documented in :mod:`mixedae.classification.datasets`."""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np

from mixedae.classification.datasets import (IGNORE, SPECS, VOC_CLASSES, ClsData,
                                             DatasetNotFoundError)

def _attr(ds, *names):
    for n in names:
        if hasattr(ds, n):
            return getattr(ds, n)
    raise RuntimeError(f"torchvision {type(ds).__name__} has none of {names}: unsupported "
                       f"torchvision version")


def _no_md5(cls, **overrides):
    """Subclass of a torchvision dataset with md5 checks replaced by existence checks."""
    return type(cls.__name__ + "NoMD5", (cls,), overrides)


def _aircraft(root: Path, **_) -> ClsData:
    from torchvision.datasets import FGVCAircraft
    tr = FGVCAircraft(str(root), split="trainval", annotation_level="variant")
    te = FGVCAircraft(str(root), split="test", annotation_level="variant")
    return ClsData("aircraft", list(tr.classes), list(tr._image_files), list(tr._labels),
                   list(te._image_files), list(te._labels),
                   split_note="FGVCAircraft variant, trainval → test")


def _caltech101(root: Path, seed: int = 0, **_) -> ClsData:
    from torchvision.datasets import Caltech101
    ds = Caltech101(str(root), target_type="category")
    base = Path(ds.root) / "101_ObjectCategories"
    paths = [base / ds.categories[y] / f"image_{i:04d}.jpg" for i, y in zip(ds.index, ds.y)]
    rng = np.random.RandomState(seed)
    train, test = [], []
    ys = np.asarray(ds.y)
    for c in range(len(ds.categories)):
        idx = np.nonzero(ys == c)[0]
        perm = rng.permutation(idx)
        train.extend(sorted(perm[:30].tolist()))
        test.extend(sorted(perm[30:].tolist()))
    return ClsData("caltech101", list(ds.categories), [str(paths[i]) for i in train],
                   [int(ys[i]) for i in train], [str(paths[i]) for i in test],
                   [int(ys[i]) for i in test],
                   split_note=f"Caltech101: 30 per class train (seed {seed}), rest test")


def _cars(root: Path, **_) -> ClsData:
    from torchvision.datasets import StanfordCars
    tr, te = StanfordCars(str(root), split="train"), StanfordCars(str(root), split="test")
    s_tr, s_te = _attr(tr, "_samples"), _attr(te, "_samples")
    return ClsData("cars", list(tr.classes), [p for p, _ in s_tr], [int(y) for _, y in s_tr],
                   [p for p, _ in s_te], [int(y) for _, y in s_te],
                   split_note="StanfordCars train → test")


def _cifar(root: Path, hundred: bool, verify_checksums: bool = True, **_) -> ClsData:
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR100 if hundred else CIFAR10
    if not verify_checksums:
        cls = _no_md5(cls, train_list=[[f, None] for f, _ in cls.train_list],
                      test_list=[[f, None] for f, _ in cls.test_list],
                      meta={**cls.meta, "md5": None})
    tr, te = cls(str(root), train=True), cls(str(root), train=False)
    name = "cifar100" if hundred else "cifar10"
    return ClsData(name, list(tr.classes), list(tr.data), [int(y) for y in tr.targets],
                   list(te.data), [int(y) for y in te.targets], split_note="train → test")


def _dtd(root: Path, **_) -> ClsData:
    from torchvision.datasets import DTD
    parts = {s: DTD(str(root), split=s, partition=1) for s in ("train", "val", "test")}
    classes = sorted(set().union(*(p.classes for p in parts.values())))
    idx = {c: i for i, c in enumerate(classes)}

    def lists(*splits):  # torchvision indexes classes per split file: remap by name
        imgs = [f for s in splits for f in parts[s]._image_files]
        ys = [idx[parts[s].classes[y]] for s in splits for y in parts[s]._labels]
        return imgs, ys
    (tr_img, tr_y), (te_img, te_y) = lists("train", "val"), lists("test")
    return ClsData("dtd", classes, tr_img, tr_y, te_img, te_y,
                   split_note="DTD partition 1: train1+val1 → test1")


def _flowers(root: Path, verify_checksums: bool = True, **_) -> ClsData:
    from torchvision.datasets import Flowers102
    cls = Flowers102
    if not verify_checksums:
        cls = _no_md5(cls, _file_dict={k: (f, None) for k, (f, _) in cls._file_dict.items()})
    parts = {s: cls(str(root), split=s) for s in ("train", "val", "test")}
    labels = list(parts["train"]._labels) + list(parts["val"]._labels) + list(parts["test"]._labels)
    n = max(labels) + 1
    classes = list(getattr(parts["train"], "classes", None) or [str(i) for i in range(n)])
    return ClsData("flowers102", classes,
                   list(parts["train"]._image_files) + list(parts["val"]._image_files),
                   list(parts["train"]._labels) + list(parts["val"]._labels),
                   list(parts["test"]._image_files), list(parts["test"]._labels),
                   split_note="Flowers102 train+val → test")


def _food(root: Path, **_) -> ClsData:
    from torchvision.datasets import Food101
    tr, te = Food101(str(root), split="train"), Food101(str(root), split="test")
    if tr.classes != te.classes:
        raise ValueError(f"{root}/food-101/meta: train and test list different classes")
    return ClsData("food101", list(tr.classes), list(tr._image_files), list(tr._labels),
                   list(te._image_files), list(te._labels), split_note="Food101 train → test")


def _pets(root: Path, **_) -> ClsData:
    from torchvision.datasets import OxfordIIITPet
    tr = OxfordIIITPet(str(root), split="trainval", target_types="category")
    te = OxfordIIITPet(str(root), split="test", target_types="category")
    return ClsData("pets", list(tr.classes), list(tr._images), list(tr._labels),
                   list(te._images), list(te._labels),
                   split_note="OxfordIIITPet trainval → test")


def _sun397(root: Path, seed: int = 0, **_) -> ClsData:
    from torchvision.datasets import SUN397
    ds = SUN397(str(root))
    base = Path(ds.root) / "SUN397"
    rel = {"/" + p.relative_to(base).as_posix(): (p, y)
           for p, y in zip(ds._image_files, ds._labels)}
    part_dir = next((d for d in (base, base / "Partitions")
                     if (d / "Training_01.txt").is_file() and (d / "Testing_01.txt").is_file()),
                    None)
    notes = []
    if part_dir is not None:
        out = []
        for fname in ("Training_01.txt", "Testing_01.txt"):
            lines = [ln.strip() for ln in (part_dir / fname).read_text().splitlines() if ln.strip()]
            absent = [ln for ln in lines if ln not in rel]
            if absent:
                raise DatasetNotFoundError(
                    f"sun397: {len(absent)} images listed in {part_dir / fname} are missing "
                    f"under {base} (e.g. {absent[0]})")
            out.append(([str(rel[ln][0]) for ln in lines], [int(rel[ln][1]) for ln in lines]))
        note = "SUN397 official partition 1 (Training_01 → Testing_01)"
    else:
        msg = (f"sun397: no Training_01.txt/Testing_01.txt in {base} or {base}/Partitions; "
               f"using a fixed-seed (seed {seed}) 50/50-per-class split instead of the official "
               f"partition 1 (get Partitions.zip from {SPECS['sun397'].url.split(' and ')[-1]})")
        warnings.warn(msg)
        notes.append(msg)
        rng = np.random.RandomState(seed)
        keys = sorted(rel)
        by_class: dict[int, list[str]] = {}
        for k in keys:
            by_class.setdefault(int(rel[k][1]), []).append(k)
        tr, te = [], []
        for c in sorted(by_class):
            perm = rng.permutation(by_class[c]).tolist()
            half = min(50, len(perm) // 2)
            tr += perm[:half]
            te += perm[half:2 * half]
        out = [([str(rel[k][0]) for k in s], [int(rel[k][1]) for k in s]) for s in (tr, te)]
        note = f"SUN397 seeded 50/50 per class (seed {seed}; official partitions absent)"
    return ClsData("sun397", list(ds.classes), out[0][0], out[0][1], out[1][0], out[1][1],
                   split_note=note, notes=notes)


def voc_targets(xml_path: str | Path) -> np.ndarray:
    """20-vector: 1 non-difficult object present, IGNORE only difficult ones, 0 absent."""
    t = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for obj in ET.parse(xml_path).getroot().iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{xml_path}: unknown VOC class {name!r}")
        c = VOC_CLASSES.index(name)
        difficult = obj.findtext("difficult", "0").strip() == "1"
        if not difficult:
            t[c] = 1
        elif t[c] == 0:
            t[c] = IGNORE
    return t


def _voc2007(root: Path, **_) -> ClsData:
    from torchvision.datasets import VOCDetection
    out = []
    for split in ("trainval", "test"):
        ds = VOCDetection(str(root), year="2007", image_set=split)
        out.append((list(ds.images), [voc_targets(a) for a in ds.annotations]))
    return ClsData("voc2007", list(VOC_CLASSES), out[0][0], out[0][1], out[1][0], out[1][1],
                   multilabel=True, split_note="VOC2007 trainval → test (difficult ignored)")


LOADERS: dict[str, Callable[..., ClsData]] = {
    "aircraft": _aircraft, "caltech101": _caltech101, "cars": _cars,
    "cifar10": lambda root, **kw: _cifar(root, False, **kw),
    "cifar100": lambda root, **kw: _cifar(root, True, **kw),
    "dtd": _dtd, "flowers102": _flowers, "food101": _food, "pets": _pets,
    "sun397": _sun397, "voc2007": _voc2007,
}
