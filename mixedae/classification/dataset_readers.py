"""Reading the 11 downstream datasets (:func:`load_dataset`): from their official on-disk
layouts (through the torchvision class that exists for each; ``download=False`` always) or from
an ImageFolder copy (``ROOT/<name>/{train,test}[,val]``). Layouts, splits and metrics are
documented in :mod:`mixedae.classification.datasets`, which holds what they are read into."""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np

from mixedae.classification.datasets import (VOC_CLASSES, ClsData, DatasetNotFoundError,
                                             folder_data)
from mixedae.classification.metrics import IGNORE
from mixedae.classification.specs import ORDER, SPECS


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


def _split_list(root: Path) -> Path | None:
    """The folder holding the published Caltech-101 ``train.txt`` / ``test.txt``: beside
    ``101_ObjectCategories`` (ROOT/caltech101/), in ROOT/caltech101/{splits,caltech101-splits}/,
    or ROOT itself (Ericsson et al.'s README moves the two files into the Caltech101 data
    folder, the one holding ``caltech101/101_ObjectCategories``: ROOT in this layout)."""
    base = root / "caltech101"
    for d in (base, base / "splits", base / "caltech101-splits", root):
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
    present, else Ericsson et al.'s own draw of them (torchvision's Caltech101 drops the
    background class, so the folders are read directly)."""
    base = root / "caltech101"
    images = base / "101_ObjectCategories"
    classes = sorted(d.name for d in images.iterdir() if d.is_dir())
    lists = _split_list(root)
    if lists is not None:
        (tr, ytr), (te, yte) = (_read_split(lists / f, images, classes)
                                for f in ("train.txt", "test.txt"))
        overlap = set(tr) & set(te)
        if overlap:
            raise DatasetNotFoundError(f"{lists}: {len(overlap)} images are in both train.txt "
                                       f"and test.txt (e.g. {sorted(overlap)[0]})")
        return ClsData("caltech101", classes, tr, ytr, te, yte,
                       split_note=f"Caltech-101, 102 classes, published split ({lists})")
    # ssl-transfer datasets/caltech101.py create_caltech101_splits: ImageFolder order, numpy
    # seed 0, 30 draws per class *with* replacement (so <= 30 distinct images), the rest test
    rng = np.random.RandomState(seed)
    files = [sorted(str(p) for p in (images / name).iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png")) for name in classes]
    start = np.cumsum([0] + [len(f) for f in files])
    chosen = set()
    for c in range(len(classes)):
        chosen.update(int(i) for i in rng.choice(np.arange(start[c], start[c + 1]), 30))
    flat = [(f, c) for c, fs in enumerate(files) for f in fs]
    tr, ytr = [f for i, (f, _) in enumerate(flat) if i in chosen], \
        [c for i, (_, c) in enumerate(flat) if i in chosen]
    te, yte = [f for i, (f, _) in enumerate(flat) if i not in chosen], \
        [c for i, (_, c) in enumerate(flat) if i not in chosen]
    return ClsData("caltech101", classes, tr, ytr, te, yte,
                   notes=[f"caltech101: no train.txt/test.txt in {base}, {base}/splits, "
                          f"{base}/caltech101-splits or {root}; drew the split as Ericsson et "
                          f"al.'s script does (seed {seed}); their published lists are the "
                          f"protocol's"],
                   split_note=f"Caltech-101, 102 classes, split drawn as ssl-transfer's "
                   f"create_caltech101_splits (30 draws per class with replacement, seed "
                   f"{seed}), rest test")


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


VOC_DIFFICULT = ("negative", "ignore")


def voc_targets(xml_path: str | Path, difficult: str = "negative") -> np.ndarray:
    """20-vector: 1 if a non-difficult object of the class is present, else 0; a class with
    only difficult objects is 0 (``difficult='negative'``, Ericsson et al.: their
    ``<class>_<split>.txt`` label 0 becomes ``label == 1`` → 0, trained and scored as a
    negative) or IGNORE (``'ignore'``: neither trained on nor scored, as the VOC devkit's
    detection evaluation treats difficult objects)."""
    if difficult not in VOC_DIFFICULT:
        raise ValueError(f"difficult={difficult!r}: choose from {VOC_DIFFICULT}")
    t = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for obj in ET.parse(xml_path).getroot().iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{xml_path}: unknown VOC class {name!r}")
        c = VOC_CLASSES.index(name)
        if obj.findtext("difficult", "0").strip() != "1":
            t[c] = 1
        elif t[c] == 0 and difficult == "ignore":
            t[c] = IGNORE
    return t


def _voc2007(root: Path, voc_difficult: str = "negative", **_) -> ClsData:
    from torchvision.datasets import VOCDetection
    lists = {}
    for split in ("train", "val", "test"):
        ds = VOCDetection(str(root), year="2007", image_set=split)
        lists[split] = (list(ds.images), [voc_targets(a, voc_difficult)
                                          for a in ds.annotations])
    images, targets, val = _with_val(lists["train"], lists["val"])
    how = {"negative": "difficult-only classes negative, as Ericsson et al.",
           "ignore": "difficult-only classes ignored"}[voc_difficult]
    return ClsData("voc2007", list(VOC_CLASSES), images, targets, *lists["test"],
                   multilabel=True, val_split=val, split_note=f"VOC2007 train+val → test "
                   f"({how}; official val for the lr search)")


LOADERS: dict[str, Callable[..., ClsData]] = {
    "aircraft": _aircraft, "caltech101": _caltech101, "cars": _cars,
    "cifar10": lambda root, **kw: _cifar(root, False, **kw),
    "cifar100": lambda root, **kw: _cifar(root, True, **kw),
    "dtd": _dtd, "flowers102": _flowers, "food101": _food, "pets": _pets,
    "sun397": _sun397, "voc2007": _voc2007,
}


# ==== loading: the official layout, or the ImageFolder copy of it ============================
def imagefolder_root(root: str | Path, name: str) -> Path | None:
    d = Path(root) / name
    return d if (d / "train").is_dir() and (d / "test").is_dir() else None


def check_layout(name: str, root: str | Path) -> None:
    """Raise :class:`DatasetNotFoundError` (layout + URL) unless ``name`` is readable."""
    spec = SPECS[name]
    if imagefolder_root(root, name) is not None:
        return
    missing = [p for p in spec.layout if not (Path(root) / p).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"{name}: not found under {root} (missing {', '.join(missing)}).\n"
            f"  expected: {spec.layout_doc}\n"
            f"  or ImageFolder style: ROOT/{name}/{{train,test}}/<class>/<image>\n"
            f"  official source: {spec.url}\n"
            f"  (nothing is downloaded: extract the files there first)")


def load_dataset(name: str, root: str | Path, verify_checksums: bool = True,
                 seed: int = 0, voc_difficult: str = "negative") -> ClsData:
    """Read dataset ``name`` from ``root`` (see the module docstring for splits)."""
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(ORDER)}")
    check_layout(name, root)
    folder = imagefolder_root(root, name)
    if folder is not None:
        val = "val" if (folder / "val").is_dir() else None
        return folder_data(folder, "train", "test", name=name, val_folder=val,
                           metric=SPECS[name].metric)
    return LOADERS[name](Path(root), verify_checksums=verify_checksums, seed=seed,
                         voc_difficult=voc_difficult)
