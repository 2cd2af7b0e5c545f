"""The data of the classification evaluations: the 11 downstream datasets of Table 2 (read from
pre-downloaded roots) and ImageFolder data (ImageNet layout), as lists of (image, target).

Every one of the 11 datasets is read with the torchvision class that exists for it
(``download=False`` always; nothing is ever fetched). A missing root fails before anything else
runs, with the exact on-disk layout expected and the official source URL
(:mod:`mixedae.classification.specs`). Layouts are relative to one ``ROOT``. Alternatively any
of them may be stored ImageFolder-style as ``ROOT/<name>/{train,test}[,val]/<class>/<image>``
(e.g. ``../shared/data/cls_tiny``); that layout takes precedence when present and is used as-is.

==========  ====================  ==============================  ===========================
name        torchvision class     train → test (lr search: val)   metric (Ericsson et al.)
==========  ====================  ==============================  ===========================
aircraft    FGVCAircraft          train+val → test, 100 variants  mean per-class accuracy
                                  (official val)
caltech101  (folders)             published split lists if        mean per-class accuracy
                                  present, else drawn as their
                                  script does; 102 classes with
                                  BACKGROUND_Google (20 % hold-out)
cars        StanfordCars          train → test (20 % hold-out)    top-1
cifar10     CIFAR10               train → test (20 % hold-out)    top-1
cifar100    CIFAR100              train → test (20 % hold-out)    top-1
dtd         DTD                   partition 1: train1+val1 →      top-1
                                  test1 (official val1)
flowers102  Flowers102            train+val → test (official val) mean per-class accuracy
food101     Food101               train → test (20 % hold-out)    top-1
pets        OxfordIIITPet         trainval → test (20 % hold-out) mean per-class accuracy
sun397      SUN397                partition 1 (Training_01 →      top-1
                                  Testing_01) from Partitions.zip;
                                  without it a seeded 50/50 per
                                  class, labelled (20 % hold-out)
voc2007     VOCDetection (2007)   train+val → test (official val) 11-point mAP (devkit)
==========  ====================  ==============================  ===========================

VOC2007 is 20-way multi-label: a class is positive if the image has a non-difficult object of
it, negative otherwise -- also when it has only difficult ones, as in Ericsson et al.'s code
(``datasets/voc2007.py``: the ``<class>_<split>.txt`` labels 1 / 0 (difficult) / -1 become
``label == 1``), in training and in the test mAP. ``voc_difficult='ignore'`` (``mixedae transfer
--voc-difficult ignore``) leaves such classes out of the loss and the AP instead.

**Caltech-101 split lists.** The protocol's fixed split (``caltech101-splits/{train,test}.txt``
published with Ericsson et al.'s code, github.com/linusericsson/ssl-transfer) is read from
the first folder holding both files of: ``ROOT/caltech101/`` (beside ``101_ObjectCategories``),
``ROOT/caltech101/splits/``, ``ROOT/caltech101/caltech101-splits/``, ``ROOT/`` (where their
README puts them: the Caltech101 folder holding ``caltech101/101_ObjectCategories``). One image
per line as ``<class folder>/<file> [label]`` relative to ``101_ObjectCategories``; classes are
the 102 folders in sorted order (``BACKGROUND_Google`` = 0, ``Faces`` = 1, ...); a label
column, when present, must agree. Without the lists, the split is drawn as their
``create_caltech101_splits`` draws it (ImageFolder order, numpy seed 0, 30 draws per class with
replacement, the rest test) and the result says so.

**Hold-out for the lr search** (datasets without an official val split): 20 % of the training
indices after a numpy shuffle with seed 0, as Ericsson et al.'s ``get_train_valid_loader``
(:func:`shuffled_split`, ``--holdout shuffled``); ``--holdout stratified`` takes 20 % of each
class instead (:func:`stratified_split`).

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

from mixedae.classification.specs import SPECS
from mixedae.runtime.errors import ConfigError
from mixedae.runtime.images import check_eval_set, load_eval, load_readable, require_readable

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root that is absent or incomplete; the message says what to put where."""


# ==== the data ==============================================================================


@dataclass
class ClsData:
    """One dataset's train and test examples. Images are file paths or HWC uint8 arrays;
    targets are class indices, or float vectors in {1, 0, IGNORE} when ``multilabel``.
    ``val_split``: the dataset's own (train, val) indices into the train lists, when it has
    an official validation split; ``metric``: the one the protocol scores it by."""
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
    val_split: tuple[list[int], list[int]] | None = None
    metric: str = ""
    skipped: dict = field(default_factory=dict)  # evaluation split → unreadable files left out

    def __post_init__(self):
        if not self.metric:
            self.metric = ("map11" if self.multilabel else
                           SPECS[self.name].metric if self.name in SPECS else "top1")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dataset(self, split: str, transform: Callable | None = None,
                indices: Sequence[int] | None = None,
                strict: bool | None = None) -> "ImageListDataset":
        """``strict`` (default: the test split): an evaluation set, loaded without
        substitutes (check it first: :meth:`check_eval`)."""
        images, targets = ((self.train_images, self.train_targets) if split == "train"
                           else (self.test_images, self.test_targets))
        if indices is not None:
            images = [images[i] for i in indices]
            targets = [targets[i] for i in indices]
        return ImageListDataset(images, targets, transform, name=f"{self.name}/{split}",
                                strict=split == "test" if strict is None else strict)

    def check_eval(self, what: str, indices: Sequence[int] | None = None, skip: bool = False,
                   flag: str = "", workers: int | None = None) -> list[int]:
        """Every image of an evaluation set (the test split, or ``indices`` of the train
        split: the lr-search validation part) decodes, or ConfigError naming the bad ones
        (:func:`mixedae.runtime.images.check_eval_set`); with ``skip`` they are left out: of
        the test lists (in place), or of the returned ``indices``, and recorded in
        ``skipped[what]`` and ``notes``."""
        src = self.test_images if indices is None else [self.train_images[i] for i in indices]
        keep = check_eval_set(src, f"{self.name}/{what}", skip, flag, workers=workers)
        if len(keep) == len(src):
            return list(range(len(src))) if indices is None else list(indices)
        kept = set(keep)
        self.skipped[what] = [str(x) for i, x in enumerate(src) if i not in kept]
        self.notes.append(f"{self.name}/{what}: {len(src) - len(keep)} unreadable evaluation "
                          f"images left out ({flag}): {', '.join(self.skipped[what][:5])}"
                          + (" ..." if len(self.skipped[what]) > 5 else ""))
        if not keep:
            raise ConfigError(f"{self.name}/{what}: none of its {len(src)} images can be read")
        if indices is None:
            self.test_images = [self.test_images[i] for i in keep]
            self.test_targets = [self.test_targets[i] for i in keep]
            return keep
        return [indices[i] for i in keep]


class ImageListDataset(Dataset):
    """(image, target) from a list of paths/arrays; every image converted to RGB. In a
    training set an unreadable file is named once and replaced by the next readable example
    (with its own target), as in pretraining; :meth:`require_readable` refuses an all-bad
    list. An evaluation set (``strict``) is never altered: an unreadable file raises
    :class:`~mixedae.runtime.images.UnreadableImage` naming it."""

    def __init__(self, images: Sequence[Any], targets: Sequence[Any],
                 transform: Callable | None = None, name: str = "", strict: bool = False):
        if len(images) != len(targets):
            raise ValueError(f"{name}: {len(images)} images but {len(targets)} targets")
        self.images, self.targets, self.transform, self.name = images, targets, transform, name
        self.strict, self._reported = strict, set()

    def __len__(self) -> int:
        return len(self.images)

    def require_readable(self) -> None:
        require_readable(self.images, self.name or "dataset", reported=self._reported)

    def __getitem__(self, i: int):
        if self.strict:
            img = load_eval(self.images[i])
        else:
            i, img = load_readable(self.images, i, self._reported)
        if self.transform is not None:
            img = self.transform(img)
        t = self.targets[i]
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t.astype(np.float32))
        return img, t


# ==== loading ===============================================================================


def _folder(path: Path):
    from torchvision.datasets import ImageFolder
    if not path.is_dir():
        raise DatasetNotFoundError(f"{path}: no such folder (expected <class>/<image> inside)")
    return ImageFolder(str(path))


def folder_data(root: str | Path, train_folder: str = "train", test_folder: str = "val",
                name: str | None = None, val_folder: str | None = None,
                metric: str = "top1", source: str = "imagefolder") -> ClsData:
    """ImageFolder data (ImageNet layout): ``root/<train_folder>/<class>/*`` and
    ``root/<test_folder>/<class>/*`` ('.' means ``root`` itself). With ``val_folder``, its
    images are appended to the train lists and form the official validation split."""
    root = Path(root)
    tr = _folder(root / train_folder)
    parts = [("test", _folder(root / test_folder))]
    if val_folder:
        parts.append(("val", _folder(root / val_folder)))
    for what, ds in parts:
        extra = sorted(set(ds.classes) - set(tr.classes))
        if extra:
            raise DatasetNotFoundError(f"{root / (test_folder if what == 'test' else val_folder)}"
                                       f" has classes absent from {root / train_folder}: "
                                       f"{', '.join(extra[:5])}")
    lists = {w: ([p for p, _ in ds.samples],
                 [tr.class_to_idx[ds.classes[y]] for _, y in ds.samples]) for w, ds in parts}
    train_images, train_targets = [p for p, _ in tr.samples], [y for _, y in tr.samples]
    val_split = None
    if val_folder:
        n = len(train_images)
        train_images += lists["val"][0]
        train_targets += lists["val"][1]
        val_split = (list(range(n)), list(range(n, len(train_images))))
    return ClsData(name or root.resolve().name, list(tr.classes), train_images, train_targets,
                   *lists["test"], source=source, val_split=val_split, metric=metric,
                   split_note=f"ImageFolder {root}/{{{train_folder}"
                   + (f"+{val_folder}" if val_folder else "") + f" → {test_folder}}}")


HOLDOUTS = ("shuffled", "stratified")


def shuffled_split(n: int, frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(train_idx, val_idx) as Ericsson et al.'s ``get_train_valid_loader``: the indices
    0..n-1 shuffled by numpy with ``seed``, the first ``floor(frac·n)`` to val (both sorted)."""
    idx = list(range(n))
    np.random.RandomState(seed).shuffle(idx)
    k = int(np.floor(frac * n))
    return sorted(idx[k:]), sorted(idx[:k])


def holdout_split(kind: str, labels: Sequence, frac: float,
                  seed: int) -> tuple[list[int], list[int]]:
    """The lr-search hold-out of ``kind`` (:data:`HOLDOUTS`)."""
    if kind == "shuffled":
        return shuffled_split(len(labels), frac, seed)
    if kind == "stratified":
        return stratified_split(labels, frac, seed)
    raise ValueError(f"holdout {kind!r}: choose from {HOLDOUTS}")


def stratified_split(labels: Sequence[int], frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(train_idx, val_idx): ``round(frac·n_c)`` of each class to val (≥1 if the class has ≥2
    examples, never all of it), chosen with a fixed seed. ``labels`` may be multi-label rows,
    in which case a plain random split is used."""
    rng = np.random.RandomState(seed)
    labels = list(labels)
    if labels and not np.isscalar(labels[0]) and np.ndim(labels[0]) > 0:
        perm = rng.permutation(len(labels))
        k = int(round(frac * len(labels)))
        return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    val = []
    for c in sorted(by_class):
        idx = by_class[c]
        k = min(max(int(round(frac * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.extend(rng.permutation(idx)[:k].tolist())
    vs = set(val)
    return [i for i in range(len(labels)) if i not in vs], sorted(val)


# ==== transforms ============================================================================


def train_transform(img_size: int):
    """Transfer training: RandomResizedCrop(img_size, bicubic) + horizontal flip."""
    from torchvision import transforms as T
    return T.Compose([T.RandomResizedCrop(img_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(img_size: int, crop_pct: float = 1.0):
    """Evaluation transform (timm's ``create_transform``): resize the short side to
    ``img_size / crop_pct`` (bicubic), center-crop ``img_size``, ImageNet normalisation.
    ``crop_pct`` 1.0 is the transfer protocol's Resize 224 → CenterCrop 224; 0.875 is the
    ImageNet convention (Resize 256 → CenterCrop 224) of fine-tuning, linear probing, k-NN."""
    from timm.data import create_transform
    return create_transform(img_size, is_training=False, crop_pct=crop_pct,
                            interpolation="bicubic")
