"""The 11 downstream classification datasets of Table 2, read from pre-downloaded roots.

Every dataset is read with the torchvision class that exists for it (``download=False``
always; nothing is ever fetched) and turned into a list of (image, target) pairs. A missing
root fails before anything else runs, with the exact on-disk layout expected and the
official source URL. Layouts are relative to one ``ROOT`` (the same ``root`` you would give
torchvision for every dataset).

Alternatively any dataset may be stored ImageFolder-style as ``ROOT/<name>/{train,test}/
<class>/<image>`` (e.g. ``../shared/data/cls_tiny``); that layout takes precedence when present
and is used as-is (its own train/test split, single-label).

==========  ========================  =========================================================
name        torchvision class         split used (train → test); metric
==========  ========================  =========================================================
aircraft    FGVCAircraft              ``trainval`` → ``test``, 100 *variants*; top-1
caltech101  Caltech101                no official split: 30 images per class train (chosen with a
                                      fixed seed, ``seed=0``), all the rest test; 101 classes
                                      (torchvision drops BACKGROUND_Google); top-1
cars        StanfordCars              ``train`` → ``test`` (196 classes; test labels from
                                      ``cars_test_annos_withlabels.mat``); top-1
cifar10     CIFAR10                   ``train`` (50k) → ``test`` (10k); top-1
cifar100    CIFAR100                  ``train`` (50k) → ``test`` (10k); top-1
dtd         DTD                       partition 1: ``train1 + val1`` → ``test1``; top-1
flowers102  Flowers102                ``train + val`` (trnid+valid) → ``test`` (tstid); top-1
food101     Food101                   ``train`` (75,750) → ``test`` (25,250); top-1
pets        OxfordIIITPet             ``trainval`` → ``test`` (37 breeds); top-1
sun397      SUN397                    torchvision has no partitions: we apply the official
                                      partition 1 (``Training_01.txt`` → ``Testing_01.txt``,
                                      50 + 50 per class) from ``Partitions.zip`` placed in
                                      ``ROOT/SUN397/`` (or ``ROOT/SUN397/Partitions/``). Without
                                      those files a fixed-seed (``seed=0``) 50/50-per-class split
                                      is used instead, with a warning, and recorded as such;
                                      top-1
voc2007     VOCDetection (2007)       ``trainval`` → ``test``, 20-way multi-label: a class is
                                      positive if the image has a non-difficult object of it,
                                      ignored (neither trained on nor scored) if it only has
                                      difficult ones; mAP, 11-point interpolated as in the
                                      VOC2007 devkit (the standard AP is recorded too)
==========  ========================  =========================================================

Checksums: CIFAR and Flowers102 files are md5-verified by torchvision; ``verify_checksums=
False`` (used by the tests' fake roots) only checks that the files exist.
"""
from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from PIL import Image
from torch.utils.data import Dataset

IGNORE = -1  # same value as mixedae.classification.engine.IGNORE

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root that is absent or incomplete; the message says what to put where."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    column: str           # Table 2 column header
    url: str              # official source
    layout: tuple[str, ...]  # required paths relative to ROOT (torchvision layout)
    layout_doc: str       # the on-disk layout, for error messages
    multilabel: bool = False

    @property
    def metric(self) -> str:
        return "map11" if self.multilabel else "top1"


SPECS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec(
        "aircraft", "Aircraft",
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
        ("fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/variants.txt",
         "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
         "fgvc-aircraft-2013b/data/images_variant_test.txt"),
        "ROOT/fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, "
        "images_variant_trainval.txt, images_variant_test.txt}"),
    DatasetSpec(
        "caltech101", "Caltech",
        "https://data.caltech.edu/records/mzrjq-6wc02 "
        "(caltech-101.zip → 101_ObjectCategories.tar.gz)",
        ("caltech101/101_ObjectCategories",),
        "ROOT/caltech101/101_ObjectCategories/<class>/image_0001.jpg ... (BACKGROUND_Google "
        "is ignored)"),
    DatasetSpec(
        "cars", "Cars",
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (original site offline; any mirror "
        "of cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat)",
        ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
         "stanford_cars/cars_train", "stanford_cars/cars_test",
         "stanford_cars/cars_test_annos_withlabels.mat"),
        "ROOT/stanford_cars/{devkit/{cars_meta.mat, cars_train_annos.mat}, cars_train/*.jpg, "
        "cars_test/*.jpg, cars_test_annos_withlabels.mat} (torchvision StanfordCars layout)"),
    DatasetSpec(
        "cifar10", "C10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        tuple(f"cifar-10-batches-py/{f}" for f in
              ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch", "batches.meta"]),
        "ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the extracted "
        "python tarball)"),
    DatasetSpec(
        "cifar100", "C100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        "ROOT/cifar-100-python/{train, test, meta} (the extracted python tarball)"),
    DatasetSpec(
        "dtd", "DTD", "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt",
         "dtd/dtd/labels/test1.txt"),
        "ROOT/dtd/dtd/{images/<class>/<name>.jpg, labels/{train1,val1,test1}.txt} (the tarball "
        "extracted inside ROOT/dtd/)"),
    DatasetSpec(
        "flowers102", "Flowers", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ "
        "(102flowers.tgz, imagelabels.mat, setid.mat)",
        ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
        "ROOT/flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat}"),
    DatasetSpec(
        "food101", "Food", "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
        ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"),
        "ROOT/food-101/{images/<class>/<id>.jpg, meta/{train,test}.json}"),
    DatasetSpec(
        "pets", "Pets", "https://www.robots.ox.ac.uk/~vgg/data/pets/ "
        "(data/images.tar.gz, data/annotations.tar.gz)",
        ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
         "oxford-iiit-pet/annotations/test.txt"),
        "ROOT/oxford-iiit-pet/{images/<Breed_id>.jpg, annotations/{trainval,test}.txt}"),
    DatasetSpec(
        "sun397", "SUN", "https://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz and "
        "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",
        ("SUN397/ClassName.txt",),
        "ROOT/SUN397/{ClassName.txt, a/abbey/sun_*.jpg, ..., Training_01.txt, Testing_01.txt} "
        "(partition files from Partitions.zip, directly in SUN397/ or in SUN397/Partitions/)"),
    DatasetSpec(
        "voc2007", "VOC", "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ "
        "(VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar)",
        ("VOCdevkit/VOC2007/JPEGImages", "VOCdevkit/VOC2007/Annotations",
         "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt",
         "VOCdevkit/VOC2007/ImageSets/Main/test.txt"),
        "ROOT/VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, "
        "ImageSets/Main/{trainval,test}.txt} (both tarballs extracted into ROOT)",
        multilabel=True),
]}

ORDER = list(SPECS)  # Table 2 column order


def resolve_names(spec: str) -> list[str]:
    """``'all'`` or a comma list (case-insensitive; aliases c10, c100, caltech, flowers, food,
    sun, voc) → names in Table 2 order."""
    alias = {"c10": "cifar10", "c100": "cifar100", "caltech": "caltech101",
             "flowers": "flowers102", "food": "food101", "sun": "sun397", "voc": "voc2007",
             "pet": "pets", "oxfordpets": "pets", "stanfordcars": "cars", "fgvcaircraft":
             "aircraft"}
    if spec.strip().lower() == "all":
        return list(ORDER)
    names = []
    for raw in spec.split(","):
        n = raw.strip().lower()
        if not n:
            continue
        n = alias.get(n, n)
        if n not in SPECS:
            raise ValueError(f"unknown dataset {raw.strip()!r}; choose from 'all' or "
                             f"{', '.join(ORDER)}")
        if n not in names:
            names.append(n)
    if not names:
        raise ValueError("no dataset given")
    return [n for n in ORDER if n in names]


# ==== the data ==============================================================================


@dataclass
class ClsData:
    """One dataset's train and test examples. Images are file paths or HWC uint8 arrays;
    targets are class indices, or float vectors in {1, 0, IGNORE} when ``multilabel``."""
    name: str
    classes: list[str]
    train_images: list[Any]
    train_targets: list[Any]
    test_images: list[Any]
    test_targets: list[Any]
    multilabel: bool = False
    source: str = "torchvision"
    split_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dataset(self, split: str, transform: Callable | None = None,
                indices: Sequence[int] | None = None) -> "ImageListDataset":
        images, targets = ((self.train_images, self.train_targets) if split == "train"
                           else (self.test_images, self.test_targets))
        if indices is not None:
            images = [images[i] for i in indices]
            targets = [targets[i] for i in indices]
        return ImageListDataset(images, targets, transform, name=f"{self.name}/{split}")


def load_rgb(item: Any) -> Image.Image:
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert("RGB")
    with Image.open(item) as im:
        return im.convert("RGB")


class ImageListDataset(Dataset):
    """(image, target) from a list of paths/arrays; every image converted to RGB."""

    def __init__(self, images: Sequence[Any], targets: Sequence[Any],
                 transform: Callable | None = None, name: str = ""):
        if len(images) != len(targets):
            raise ValueError(f"{name}: {len(images)} images but {len(targets)} targets")
        self.images, self.targets, self.transform, self.name = images, targets, transform, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = load_rgb(self.images[i])
        if self.transform is not None:
            img = self.transform(img)
        t = self.targets[i]
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t.astype(np.float32))
        return img, t


# ==== loading ===============================================================================


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
                 seed: int = 0) -> ClsData:
    """Read dataset ``name`` from ``root`` (see the module docstring for splits)."""
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(ORDER)}")
    check_layout(name, root)
    folder = imagefolder_root(root, name)
    if folder is not None:
        return _load_imagefolder(name, folder)
    return _LOADERS[name](Path(root), verify_checksums=verify_checksums, seed=seed)


def _load_imagefolder(name: str, folder: Path) -> ClsData:
    from torchvision.datasets import ImageFolder
    tr, te = ImageFolder(str(folder / "train")), ImageFolder(str(folder / "test"))
    extra = sorted(set(te.classes) - set(tr.classes))
    if extra:
        raise ValueError(f"{folder}/test has classes absent from train: {', '.join(extra)}")
    remap = [tr.class_to_idx[c] for c in te.classes]
    return ClsData(name, list(tr.classes), [p for p, _ in tr.samples],
                   [y for _, y in tr.samples], [p for p, _ in te.samples],
                   [remap[y] for _, y in te.samples], source="imagefolder",
                   split_note=f"ImageFolder {folder}/{{train,test}}")


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


_LOADERS: dict[str, Callable[..., ClsData]] = {
    "aircraft": _aircraft, "caltech101": _caltech101, "cars": _cars,
    "cifar10": lambda root, **kw: _cifar(root, False, **kw),
    "cifar100": lambda root, **kw: _cifar(root, True, **kw),
    "dtd": _dtd, "flowers102": _flowers, "food101": _food, "pets": _pets,
    "sun397": _sun397, "voc2007": _voc2007,
}


# ==== transforms ============================================================================


def train_transform(img_size: int):
    """Transfer training: RandomResizedCrop(img_size, bicubic) + horizontal flip."""
    from torchvision import transforms as T
    return T.Compose([T.RandomResizedCrop(img_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(img_size: int, crop_pct: float = 0.875):
    """Resize the short side to img_size/crop_pct (256 for 224), center-crop img_size."""
    from torchvision import transforms as T
    return T.Compose([T.Resize(int(round(img_size / crop_pct)),
                               interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(img_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
