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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import Dataset

from mixedae.classification.metrics import IGNORE  # noqa: E402,F401 (re-exported)
from mixedae.runtime.images import load_readable, require_readable  # noqa: E402

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


class ImageListDataset(Dataset):
    """(image, target) from a list of paths/arrays; every image converted to RGB. An
    unreadable file is named once and replaced by the next readable example (with its own
    target), as in pretraining; :meth:`require_readable` refuses an all-bad list."""

    def __init__(self, images: Sequence[Any], targets: Sequence[Any],
                 transform: Callable | None = None, name: str = ""):
        if len(images) != len(targets):
            raise ValueError(f"{name}: {len(images)} images but {len(targets)} targets")
        self.images, self.targets, self.transform, self.name = images, targets, transform, name
        self._reported: set = set()

    def __len__(self) -> int:
        return len(self.images)

    def require_readable(self) -> None:
        require_readable(self.images, self.name or "dataset", reported=self._reported)

    def __getitem__(self, i: int):
        i, img = load_readable(self.images, i, self._reported)
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
    from mixedae.classification.dataset_readers import LOADERS
    return LOADERS[name](Path(root), verify_checksums=verify_checksums, seed=seed)


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


# ==== transforms ============================================================================


def train_transform(img_size: int):
    """Transfer training: RandomResizedCrop(img_size, bicubic) + horizontal flip."""
    from torchvision import transforms as T
    return T.Compose([T.RandomResizedCrop(img_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(img_size: int, crop_pct: float = 0.875):
    """timm's evaluation transform: resize the short side to ⌊img_size/crop_pct⌋ (256 for 224,
    bicubic), center-crop img_size, ImageNet normalisation."""
    from timm.data import create_transform
    return create_transform(img_size, is_training=False, crop_pct=crop_pct,
                            interpolation="bicubic")
