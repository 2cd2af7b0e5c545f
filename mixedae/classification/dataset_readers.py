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


def _with_val(train: tuple[list, list], val: tuple[list, list]):
    """Train lists = train + val, and the official (train, val) indices into them."""
    n, m = len(train[0]), len(val[0])
    return (train[0] + val[0], train[1] + val[1],
            (list(range(n)), list(range(n, n + m))))


def _aircraft(root: Path, **_) -> ClsData:
    from torchvision.datasets import FGVCAircraft
    parts = {s: FGVCAircraft(str(root), split=s, annotation_level="variant")
             for s in ("train", "val", "test")}
    lists = {s: (list(d._image_files), list(d._labels)) for s, d in parts.items()}
    images, targets, val = _with_val(lists["train"], lists["val"])
    return ClsData("aircraft", list(parts["train"].classes), images, targets, *lists["test"],
                   val_split=val, split_note="FGVCAircraft variant, train+val → test "
                   "(official val for the lr search)")


def _split_list(base: Path) -> Path | None:
    for d in (base / "splits", base / "caltech101-splits"):
        if (d / "train.txt").is_file() and (d / "test.txt").is_file():
            return d
    return None


def _read_split(path: Path, images: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """``<class>/<file> [label]`` lines → (paths, class indices), checked against the disk."""
    paths, ys = [], []
    idx = {c: i for i, c in enumerate(classes)}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        rel, cls = parts[0], parts[0].split("/")[0]
        if cls not in idx or len(parts) > 2:
            raise DatasetNotFoundError(f"{path}:{n}: {line.strip()!r} is not '<class>/<file> "
                                       f"[label]' with one of the {len(classes)} class folders")
        if len(parts) == 2 and parts[1] != str(idx[cls]):
            raise DatasetNotFoundError(f"{path}:{n}: label {parts[1]} but {cls!r} is class "
                                       f"{idx[cls]} of the sorted folders")
        if not (images / rel).is_file():
            raise DatasetNotFoundError(f"{path}:{n}: {images / rel} does not exist")
        paths.append(str(images / rel))
        ys.append(idx[cls])
    return paths, ys


def _caltech101(root: Path, seed: int = 0, **_) -> ClsData:
    """102 classes (the 101 categories and BACKGROUND_Google), published split lists when
    present, else a seeded 30-per-class split (torchvision's Caltech101 drops the background
    class, so the folders are read directly)."""
    base = root / "caltech101"
    images = base / "101_ObjectCategories"
    classes = sorted(d.name for d in images.iterdir() if d.is_dir())
    lists = _split_list(base)
    if lists is not None:
        (tr, ytr), (te, yte) = (_read_split(lists / f, images, classes)
                                for f in ("train.txt", "test.txt"))
        overlap = set(tr) & set(te)
        if overlap:
            raise DatasetNotFoundError(f"{lists}: {len(overlap)} images are in both train.txt "
                                       f"and test.txt (e.g. {sorted(overlap)[0]})")
        return ClsData("caltech101", classes, tr, ytr, te, yte,
                       split_note=f"Caltech-101, 102 classes, published split ({lists})")
    rng = np.random.RandomState(seed)
    tr, ytr, te, yte = [], [], [], []
    for c, name in enumerate(classes):
        files = sorted(str(p) for p in (images / name).iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        perm = rng.permutation(len(files))
        for k, i in enumerate(perm):
            (tr if k < 30 else te).append(files[i])
            (ytr if k < 30 else yte).append(c)
    return ClsData("caltech101", classes, tr, ytr, te, yte,
                   notes=[f"caltech101: no split lists in {base}/splits; using a seeded split "
                          f"(fallback), not the protocol's published one"],
                   split_note=f"Caltech-101, 102 classes, seeded split (fallback): 30 per "
                   f"class train (seed {seed}), rest test")


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

    def lists(s):  # torchvision indexes classes per split file: remap by name
        return (list(parts[s]._image_files),
                [idx[parts[s].classes[y]] for y in parts[s]._labels])
    images, targets, val = _with_val(lists("train"), lists("val"))
    return ClsData("dtd", classes, images, targets, *lists("test"), val_split=val,
                   split_note="DTD partition 1: train1+val1 → test1 (official val1 for the "
                   "lr search)")


def _flowers(root: Path, verify_checksums: bool = True, **_) -> ClsData:
    from torchvision.datasets import Flowers102
    cls = Flowers102
    if not verify_checksums:
        cls = _no_md5(cls, _file_dict={k: (f, None) for k, (f, _) in cls._file_dict.items()})
    parts = {s: cls(str(root), split=s) for s in ("train", "val", "test")}
    lists = {s: (list(d._image_files), list(d._labels)) for s, d in parts.items()}
    n = max(max(y) for _, y in lists.values()) + 1
    classes = list(getattr(parts["train"], "classes", None) or [str(i) for i in range(n)])
    images, targets, val = _with_val(lists["train"], lists["val"])
    return ClsData("flowers102", classes, images, targets, *lists["test"], val_split=val,
                   split_note="Flowers102 train+val → test (official val for the lr search)")


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
    lists = {}
    for split in ("train", "val", "test"):
        ds = VOCDetection(str(root), year="2007", image_set=split)
        lists[split] = (list(ds.images), [voc_targets(a) for a in ds.annotations])
    images, targets, val = _with_val(lists["train"], lists["val"])
    return ClsData("voc2007", list(VOC_CLASSES), images, targets, *lists["test"],
                   multilabel=True, val_split=val, split_note="VOC2007 train+val → test "
                   "(difficult ignored; official val for the lr search)")


LOADERS: dict[str, Callable[..., ClsData]] = {
    "aircraft": _aircraft, "caltech101": _caltech101, "cars": _cars,
    "cifar10": lambda root, **kw: _cifar(root, False, **kw),
    "cifar100": lambda root, **kw: _cifar(root, True, **kw),
    "dtd": _dtd, "flowers102": _flowers, "food101": _food, "pets": _pets,
    "sun397": _sun397, "voc2007": _voc2007,
}
