"""The 11 downstream classification datasets of Table 2: where each comes from, its on-disk
layout, and the metric the protocol scores it by.

Metrics follow Ericsson et al., "How well do self-supervised models transfer?" (CVPR 2021, the
paper's ref. [20], whose set-up the paper follows): **mean per-class accuracy** for Aircraft,
Caltech-101, Flowers and Pets, **11-point mAP** (VOC2007 devkit) for VOC2007 and **top-1
accuracy** for the rest. Every run also stores the other metrics (top-1, top-5, mean per-class
for single-label datasets; standard-AP mAP for VOC), so results can be compared with papers
that report something else.
"""
from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_METRICS = ("top1", "mean_per_class", "map11")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    column: str           # Table 2 column header
    url: str              # official source
    layout: tuple[str, ...]  # required paths relative to ROOT (torchvision layout)
    layout_doc: str       # the on-disk layout, for error messages
    metric: str = "top1"  # the protocol's metric (one of PROTOCOL_METRICS)
    official_val: bool = False  # the lr search uses the dataset's own validation split

    @property
    def multilabel(self) -> bool:
        return self.metric == "map11"


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
SPECS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec(
        "aircraft", "Aircraft", f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
        tuple(f"fgvc-aircraft-2013b/data/{p}" for p in (
            "images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
            "images_variant_test.txt")),
        "ROOT/fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, "
        "images_variant_{train,val,test}.txt}", metric="mean_per_class", official_val=True),
    DatasetSpec(
        "caltech101", "Caltech", "https://data.caltech.edu/records/mzrjq-6wc02 "
        "(caltech-101.zip → 101_ObjectCategories.tar.gz)",
        ("caltech101/101_ObjectCategories",),
        "ROOT/caltech101/101_ObjectCategories/<class>/image_0001.jpg ... (102 classes with "
        "BACKGROUND_Google) and, for the published split, ROOT/caltech101/splits/"
        "{train,test}.txt (lines '<class>/image_NNNN.jpg [label]')", metric="mean_per_class"),
    DatasetSpec(
        "cars", "Cars",
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (original site offline; any "
        "mirror of cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
        "cars_test_annos_withlabels.mat)",
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
        "dtd", "DTD", f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz",
        ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt",
         "dtd/dtd/labels/test1.txt"),
        "ROOT/dtd/dtd/{images/<class>/<name>.jpg, labels/{train1,val1,test1}.txt} (the "
        "tarball extracted inside ROOT/dtd/)", official_val=True),
    DatasetSpec(
        "flowers102", "Flowers", f"{_VGG}/flowers/102/ (102flowers.tgz, imagelabels.mat, "
        "setid.mat)",
        ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
        "ROOT/flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat}",
        metric="mean_per_class", official_val=True),
    DatasetSpec(
        "food101", "Food", "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
        ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"),
        "ROOT/food-101/{images/<class>/<id>.jpg, meta/{train,test}.json}"),
    DatasetSpec(
        "pets", "Pets", f"{_VGG}/pets/ (data/images.tar.gz, data/annotations.tar.gz)",
        ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trainval.txt",
         "oxford-iiit-pet/annotations/test.txt"),
        "ROOT/oxford-iiit-pet/{images/<Breed_id>.jpg, annotations/{trainval,test}.txt}",
        metric="mean_per_class"),
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
         *(f"VOCdevkit/VOC2007/ImageSets/Main/{s}.txt" for s in ("train", "val", "test"))),
        "ROOT/VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml, "
        "ImageSets/Main/{train,val,test}.txt} (both tarballs extracted into ROOT)",
        metric="map11", official_val=True),
]}

ORDER = list(SPECS)  # Table 2 column order

ALIASES = {"c10": "cifar10", "c100": "cifar100", "caltech": "caltech101",
           "flowers": "flowers102", "food": "food101", "sun": "sun397", "voc": "voc2007",
           "pet": "pets", "oxfordpets": "pets", "stanfordcars": "cars",
           "fgvcaircraft": "aircraft"}


def resolve_names(spec: str) -> list[str]:
    """``'all'`` (Table 2 order) or a comma list (case-insensitive; aliases c10, c100,
    caltech, flowers, food, sun, voc) → names in the order given, duplicates dropped."""
    if spec.strip().lower() == "all":
        return list(ORDER)
    names = []
    for raw in spec.split(","):
        n = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not n:
            continue
        if n not in SPECS:
            raise ValueError(f"unknown dataset {raw.strip()!r}; choose from 'all' or "
                             f"{', '.join(ORDER)}")
        if n not in names:
            names.append(n)
    if not names:
        raise ValueError("no dataset given")
    return names


def protocol_metric(name: str) -> str:
    """The metric the protocol scores dataset ``name`` by (``top1`` for data outside the 11,
    e.g. ImageNet)."""
    return SPECS[name].metric if name in SPECS else "top1"
