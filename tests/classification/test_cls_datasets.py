"""Dataset adapters on tiny fake roots in each dataset's real on-disk layout, the VOC2007
metrics against sklearn / a hand computation, and the lr-search split."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixedae.classification import datasets as D
from mixedae.classification import metrics as M
from mixedae.classification.dataset_readers import load_dataset
from mixedae.classification.metrics import IGNORE
from mixedae.classification.specs import ORDER, SPECS, resolve_names

from conftest import data_dir


def jpg(path: Path, color=(120, 40, 200), size=(12, 10), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path, "JPEG")


def check_items(data: D.ClsData, n: int = 2) -> None:
    """Images load as RGB tensors of the transform's size, targets are valid."""
    ds = data.dataset("train", D.eval_transform(16))
    for i in range(min(n, len(ds))):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        if data.multilabel:
            assert y.shape == (data.num_classes,)
        else:
            assert 0 <= y < data.num_classes
    te = data.dataset("test", D.train_transform(16))
    x, _ = te[0]
    assert x.shape == (3, 16, 16)


# ---- fake roots ---------------------------------------------------------------------------


def fake_aircraft(root: Path) -> None:
    d = root / "fgvc-aircraft-2013b" / "data"
    (d / "variants.txt").parent.mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nA300B4\nF-16A/B\n")
    split = {"train": [("1000001", "707-320"), ("1000002", "F-16A/B")],
             "val": [("1000003", "A300B4")],
             "test": [("2000001", "A300B4"), ("2000002", "F-16A/B")]}
    split["trainval"] = split["train"] + split["val"]
    for s, rows in split.items():
        (d / f"images_variant_{s}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
        for i, _ in rows:
            jpg(d / "images" / f"{i}.jpg")


def fake_caltech(root: Path) -> None:
    base = root / "caltech101" / "101_ObjectCategories"
    for c, n in (("BACKGROUND_Google", 3), ("accordion", 33), ("airplanes", 32)):
        for i in range(1, n + 1):
            jpg(base / c / f"image_{i:04d}.jpg", mode="L" if i == 1 else "RGB")


def fake_cars(root: Path) -> None:
    from scipy.io import savemat
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat",
            {"class_names": np.array([["AM General Hummer SUV 2000", "Audi R8 Coupe 2012",
                                       "BMW M3 Coupe 2012"]], dtype=object)})

    def annos(rows):
        a = np.zeros((1, len(rows)), dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
                                             ("bbox_y2", "O"), ("class", "O"), ("fname", "O")])
        for k, (f, c) in enumerate(rows):
            a[0, k] = (1, 1, 5, 5, c, f)
        return {"annotations": a}
    savemat(base / "devkit" / "cars_train_annos.mat", annos([("00001.jpg", 3), ("00002.jpg", 1)]))
    savemat(base / "cars_test_annos_withlabels.mat", annos([("00001.jpg", 2), ("00002.jpg", 3),
                                                            ("00003.jpg", 1)]))
    for f in ("00001.jpg", "00002.jpg"):
        jpg(base / "cars_train" / f)
    for f in ("00001.jpg", "00002.jpg", "00003.jpg"):
        jpg(base / "cars_test" / f)


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def fake_cifar10(root: Path) -> None:
    d = root / "cifar-10-batches-py"
    rng = np.random.RandomState(0)
    for k in range(1, 6):
        _pickle(d / f"data_batch_{k}", {"data": rng.randint(0, 255, (2, 3072), dtype=np.uint8),
                                        "labels": [k % 10, (k + 3) % 10]})
    _pickle(d / "test_batch", {"data": rng.randint(0, 255, (3, 3072), dtype=np.uint8),
                               "labels": [0, 1, 9]})
    _pickle(d / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                                 "dog", "frog", "horse", "ship", "truck"]})


def fake_cifar100(root: Path) -> None:
    d = root / "cifar-100-python"
    rng = np.random.RandomState(0)
    _pickle(d / "train", {"data": rng.randint(0, 255, (4, 3072), dtype=np.uint8),
                          "fine_labels": [0, 5, 99, 42]})
    _pickle(d / "test", {"data": rng.randint(0, 255, (2, 3072), dtype=np.uint8),
                         "fine_labels": [7, 99]})
    _pickle(d / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})


def fake_dtd(root: Path) -> None:
    d = root / "dtd" / "dtd"
    files = {"train1": ["banded/banded_0001.jpg", "zigzagged/zigzagged_0001.jpg"],
             "val1": ["banded/banded_0002.jpg", "dotted/dotted_0001.jpg"],
             "test1": ["zigzagged/zigzagged_0002.jpg", "dotted/dotted_0002.jpg",
                       "banded/banded_0003.jpg"]}
    (d / "labels").mkdir(parents=True)
    for s, rows in files.items():
        (d / "labels" / f"{s}.txt").write_text("".join(r + "\n" for r in rows))
        for r in rows:
            jpg(d / "images" / r)


def fake_flowers(root: Path) -> None:
    from scipy.io import savemat
    d = root / "flowers-102"
    labels = np.array([[1, 2, 102, 1, 2, 3, 5]])  # 1-based, image_00001..7
    savemat(d / "imagelabels.mat" if d.mkdir(parents=True) is None else None, {"labels": labels})
    savemat(d / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]),
                              "tstid": np.array([[5, 6, 7]])})
    for i in range(1, 8):
        jpg(d / "jpg" / f"image_{i:05d}.jpg")


def fake_food(root: Path) -> None:
    d = root / "food-101"
    meta = {"train": {"apple_pie": ["apple_pie/1005649", "apple_pie/1011328"],
                      "waffles": ["waffles/1008694"]},
            "test": {"apple_pie": ["apple_pie/1011059"], "waffles": ["waffles/1030654"]}}
    (d / "meta").mkdir(parents=True)
    for s, m in meta.items():
        (d / "meta" / f"{s}.json").write_text(json.dumps(m))
        for rows in m.values():
            for r in rows:
                jpg(d / "images" / f"{r}.jpg")


def fake_pets(root: Path) -> None:
    d = root / "oxford-iiit-pet"
    (d / "annotations").mkdir(parents=True)
    rows = {"trainval": ["Abyssinian_100 1 1 1", "american_bulldog_100 2 2 1",
                         "yorkshire_terrier_1 37 2 25"],
            "test": ["Abyssinian_1 1 1 1", "yorkshire_terrier_10 37 2 25"]}
    for s, r in rows.items():
        (d / "annotations" / f"{s}.txt").write_text("".join(x + "\n" for x in r))
        for x in r:
            jpg(d / "images" / f"{x.split()[0]}.jpg")


def fake_sun(root: Path, partitions: bool) -> None:
    d = root / "SUN397"
    d.mkdir(parents=True)
    (d / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    names = {"/a/abbey": [f"sun_a{i}" for i in range(4)],
             "/b/bakery/shop": [f"sun_b{i}" for i in range(4)]}
    for c, ims in names.items():
        for n in ims:
            jpg(d / c[1:] / f"{n}.jpg")
    if partitions:
        (d / "Partitions").mkdir()
        (d / "Partitions" / "Training_01.txt").write_text(
            "/a/abbey/sun_a0.jpg\n/a/abbey/sun_a1.jpg\n/b/bakery/shop/sun_b3.jpg\n")
        (d / "Partitions" / "Testing_01.txt").write_text(
            "/a/abbey/sun_a2.jpg\n/b/bakery/shop/sun_b0.jpg\n")


def voc_xml(objs) -> str:
    o = "".join(f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
                f"<difficult>{int(d)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                f"<xmax>5</xmax><ymax>5</ymax></bndbox></object>" for n, d in objs)
    return (f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>12"
            f"</width><height>10</height><depth>3</depth></size>{o}</annotation>")


def fake_voc(root: Path) -> None:
    d = root / "VOCdevkit" / "VOC2007"
    ann = {"000005": [("chair", 0), ("chair", 1), ("person", 0)],
           "000007": [("car", 0)],
           "000009": [("horse", 0), ("person", 1)],
           "000001": [("dog", 0), ("person", 0)],
           "000002": [("train", 0)]}
    (d / "ImageSets" / "Main").mkdir(parents=True)
    (d / "Annotations").mkdir()
    (d / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n000009\n")
    (d / "ImageSets" / "Main" / "train.txt").write_text("000005\n000009\n")
    (d / "ImageSets" / "Main" / "val.txt").write_text("000007\n")
    (d / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    for i, objs in ann.items():
        (d / "Annotations" / f"{i}.xml").write_text(voc_xml(objs))
        jpg(d / "JPEGImages" / f"{i}.jpg")


FAKES = {"aircraft": fake_aircraft, "caltech101": fake_caltech, "cars": fake_cars,
         "cifar10": fake_cifar10, "cifar100": fake_cifar100, "dtd": fake_dtd,
         "flowers102": fake_flowers, "food101": fake_food, "pets": fake_pets,
         "sun397": lambda r: fake_sun(r, True), "voc2007": fake_voc}


def load(name, root):
    return load_dataset(name, root, verify_checksums=False)


# ---- per-adapter tests --------------------------------------------------------------------


def test_table2_order_and_names():
    assert [SPECS[n].column for n in ORDER] == [
        "Aircraft", "Caltech", "Cars", "C10", "C100", "DTD", "Flowers", "Food", "Pets", "SUN",
        "VOC"]
    assert resolve_names("all") == ORDER
    # the order given is kept (datasets run in that order), duplicates dropped
    assert resolve_names("voc, C10,caltech,c10") == ["voc2007", "cifar10", "caltech101"]
    assert {n: SPECS[n].metric for n in ORDER if SPECS[n].metric != "top1"} == {
        "aircraft": "mean_per_class", "caltech101": "mean_per_class",
        "flowers102": "mean_per_class", "pets": "mean_per_class", "voc2007": "map11"}
    assert [n for n in ORDER if SPECS[n].official_val] == ["aircraft", "dtd", "flowers102",
                                                               "voc2007"]
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        resolve_names("imagenet")


@pytest.mark.parametrize("name", ORDER)
def test_missing_root_names_layout_and_url(tmp_path, name):
    with pytest.raises(D.DatasetNotFoundError) as e:
        load_dataset(name, tmp_path)
    msg = str(e.value)
    assert SPECS[name].layout_doc in msg and SPECS[name].url in msg
    assert str(tmp_path) in msg and f"ROOT/{name}/{{train,test}}" in msg
    assert not any(tmp_path.iterdir()), "a failed load must not create anything"


def test_aircraft(tmp_path):
    fake_aircraft(tmp_path)
    d = load("aircraft", tmp_path)
    assert d.classes == ["707-320", "A300B4", "F-16A/B"]
    assert d.train_targets == [0, 2, 1] and d.test_targets == [1, 2]  # train + val
    assert Path(d.train_images[1]).name == "1000002.jpg"
    assert d.val_split == ([0, 1], [2]) and d.metric == "mean_per_class"
    check_items(d)


def test_caltech101_102_classes_seeded_fallback(tmp_path):
    fake_caltech(tmp_path)
    d = load("caltech101", tmp_path)
    assert d.classes == ["BACKGROUND_Google", "accordion", "airplanes"]  # 102 in the real one
    assert d.metric == "mean_per_class"
    # drawn as ssl-transfer's create_caltech101_splits: ImageFolder order, np.random.seed(0),
    # np.random.choice(class indices, 30) (with replacement) per class, the rest test
    from torchvision.datasets import ImageFolder
    ref = ImageFolder(str(tmp_path / "caltech101" / "101_ObjectCategories"))
    labels = [y for _, y in ref.imgs]
    np.random.seed(0)
    picked = set()
    for c in range(len(ref.classes)):
        picked.update(np.random.choice([i for i, y in enumerate(labels) if y == c], 30).tolist())
    assert sorted(d.train_images) == sorted(ref.imgs[i][0] for i in picked)
    assert sorted(d.test_images) == sorted(p for i, (p, _) in enumerate(ref.imgs)
                                           if i not in picked)
    assert 0 < d.train_targets.count(1) < 30  # with replacement: fewer distinct than draws
    assert all(Path(p).parent.name == d.classes[y] for p, y in zip(d.train_images, d.train_targets))
    assert "create_caltech101_splits" in d.split_note and d.notes  # labelled as such
    again = load("caltech101", tmp_path)
    assert again.train_images == d.train_images  # fixed seed
    for split, images in (("train", d.train_images), ("test", d.test_images)):
        for i, p in enumerate(images):
            if p.endswith("image_0001.jpg"):  # the grayscale ones
                x, _ = d.dataset(split, D.eval_transform(8))[i]
                assert x.shape == (3, 8, 8)  # converted to RGB
    check_items(d)


@pytest.mark.parametrize("where", ["caltech101", ".", "caltech101/splits",
                                   "caltech101/caltech101-splits"])
def test_caltech101_published_split_lists(tmp_path, where):
    """Found where Ericsson et al.'s README moves them (the Caltech101 folder: ROOT here, or
    beside 101_ObjectCategories) and in splits/ or caltech101-splits/."""
    fake_caltech(tmp_path)
    splits = tmp_path / where
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "train.txt").write_text("BACKGROUND_Google/image_0002.jpg 0\n"
                                      "accordion/image_0001.jpg 1\nairplanes/image_0007.jpg 2\n")
    (splits / "test.txt").write_text("accordion/image_0033.jpg\nBACKGROUND_Google/image_0003.jpg\n")
    d = load("caltech101", tmp_path)
    assert d.train_targets == [0, 1, 2] and d.test_targets == [1, 0]
    assert [Path(p).name for p in d.test_images] == ["image_0033.jpg", "image_0003.jpg"]
    assert "published split" in d.split_note and not d.notes
    (splits / "test.txt").write_text("accordion/image_0033.jpg 2\n")  # wrong label
    with pytest.raises(D.DatasetNotFoundError, match=r"test.txt:1: label 2 but 'accordion' is "
                       r"class 1"):
        load("caltech101", tmp_path)
    (splits / "test.txt").write_text("accordion/image_0099.jpg\n")  # absent file
    with pytest.raises(D.DatasetNotFoundError, match=r"image_0099.jpg does not exist"):
        load("caltech101", tmp_path)


def test_cars(tmp_path):
    fake_cars(tmp_path)
    d = load("cars", tmp_path)
    assert d.classes[1] == "Audi R8 Coupe 2012" and len(d.classes) == 3
    assert d.train_targets == [2, 0] and d.test_targets == [1, 2, 0]
    assert Path(d.test_images[2]).parent.name == "cars_test"
    check_items(d)


def test_cifar10_and_100(tmp_path):
    fake_cifar10(tmp_path)
    fake_cifar100(tmp_path)
    c10 = load("cifar10", tmp_path)
    assert len(c10.train_images) == 10 and c10.test_targets == [0, 1, 9]
    assert c10.classes[9] == "truck" and c10.train_images[0].shape == (32, 32, 3)
    check_items(c10)
    c100 = load("cifar100", tmp_path)
    assert c100.num_classes == 100 and c100.train_targets == [0, 5, 99, 42]
    check_items(c100)
    with pytest.raises(RuntimeError, match="corrupted"):  # md5 is checked by default
        load_dataset("cifar10", tmp_path)


def test_dtd_partition1_train_plus_val(tmp_path):
    fake_dtd(tmp_path)
    d = load("dtd", tmp_path)
    assert d.classes == ["banded", "dotted", "zigzagged"]
    assert [Path(p).name for p in d.train_images] == [
        "banded_0001.jpg", "zigzagged_0001.jpg", "banded_0002.jpg", "dotted_0001.jpg"]
    assert d.train_targets == [0, 2, 0, 1] and d.test_targets == [2, 1, 0]
    assert d.val_split == ([0, 1], [2, 3])  # official val1
    check_items(d)


def test_flowers_train_plus_val(tmp_path):
    fake_flowers(tmp_path)
    d = load("flowers102", tmp_path)
    assert [Path(p).name for p in d.train_images] == [f"image_0000{i}.jpg" for i in (1, 2, 3, 4)]
    assert d.train_targets == [0, 1, 101, 0] and d.test_targets == [1, 2, 4]
    assert d.num_classes == 102 and d.val_split == ([0, 1], [2, 3])
    check_items(d)


def test_food101(tmp_path):
    fake_food(tmp_path)
    d = load("food101", tmp_path)
    assert d.classes == ["apple_pie", "waffles"]
    assert d.train_targets == [0, 0, 1] and d.test_targets == [0, 1]
    check_items(d)


def test_pets_trainval(tmp_path):
    fake_pets(tmp_path)
    d = load("pets", tmp_path)
    assert d.train_targets == [0, 1, 36] and d.test_targets == [0, 36]
    assert d.classes[0] == "Abyssinian"
    check_items(d)


def test_sun397_official_partition(tmp_path):
    fake_sun(tmp_path, partitions=True)
    d = load("sun397", tmp_path)
    assert d.classes == ["abbey", "bakery/shop"]
    assert [Path(p).name for p in d.train_images] == ["sun_a0.jpg", "sun_a1.jpg", "sun_b3.jpg"]
    assert d.train_targets == [0, 0, 1] and d.test_targets == [0, 1]
    assert "partition 1" in d.split_note and not d.notes
    check_items(d)


def test_sun397_without_partitions_warns_and_records(tmp_path):
    fake_sun(tmp_path, partitions=False)
    with pytest.warns(UserWarning, match="Partitions"):
        d = load("sun397", tmp_path)
    assert d.train_targets.count(0) == 2 and d.test_targets.count(1) == 2
    assert not set(d.train_images) & set(d.test_images)
    assert d.notes and "seeded" in d.split_note


def test_voc2007_multilabel_targets(tmp_path):
    fake_voc(tmp_path)
    d = load("voc2007", tmp_path)
    assert d.multilabel and d.classes == D.VOC_CLASSES
    ci = D.VOC_CLASSES.index
    t = d.train_targets
    assert t[0][ci("chair")] == 1 and t[0][ci("person")] == 1 and t[0].sum() == 2
    # only a difficult person: a negative, as Ericsson et al. (their label 0 → label == 1 false)
    assert t[1][ci("horse")] == 1 and t[1][ci("person")] == 0 and t[1].sum() == 1
    ign = load_dataset("voc2007", tmp_path, verify_checksums=False, voc_difficult="ignore")
    assert ign.train_targets[1][ci("person")] == IGNORE and "ignored" in ign.split_note
    assert "negative" in d.split_note
    assert [Path(p).stem for p in d.test_images] == ["000001", "000002"]
    assert [Path(p).stem for p in d.train_images] == ["000005", "000009", "000007"]  # train+val
    assert d.val_split == ([0, 1], [2]) and d.metric == "map11"
    check_items(d)


def test_imagefolder_layout_takes_precedence(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in ("b_cls", "a_cls"):
            for i in range(n):
                jpg(tmp_path / "pets" / split / c / f"{i}.jpg")
    d = load_dataset("pets", tmp_path)
    assert d.source == "imagefolder" and d.classes == ["a_cls", "b_cls"]
    assert d.train_targets == [0, 0, 0, 1, 1, 1] and d.test_targets == [0, 0, 1, 1]
    assert d.val_split is None and d.metric == "mean_per_class"
    jpg(tmp_path / "pets" / "val" / "b_cls" / "0.jpg")  # an own val folder: official val
    d = load_dataset("pets", tmp_path)
    assert d.train_targets == [0, 0, 0, 1, 1, 1, 1] and d.val_split == ([0, 1, 2, 3, 4, 5], [6])


def test_real_cls_tiny_imagefolder():
    root = data_dir("cls_tiny")
    c = load_dataset("cifar10", root)
    assert len(c.train_images) == 2000 and len(c.test_images) == 1000 and c.num_classes == 10
    cal = load_dataset("caltech101", root)
    assert cal.num_classes == 10 and len(cal.train_images) == 300
    check_items(cal, n=4)


# ---- metrics ------------------------------------------------------------------------------


def test_standard_ap_equals_sklearn():
    from sklearn.metrics import average_precision_score
    rng = np.random.RandomState(0)
    for trial in range(20):
        n = rng.randint(5, 60)
        y = (rng.rand(n) < 0.4).astype(int)
        y[0] = 1
        s = rng.randn(n)
        if trial % 2:  # ties
            s = np.round(s, 1)
        assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    scores = rng.randn(40, 5)
    targets = (rng.rand(40, 5) < 0.3).astype(int)
    targets[0] = 1
    expect = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(5)])
    assert M.mean_ap(scores, targets, eleven_point=False) == pytest.approx(expect, abs=1e-12)


def test_voc07_11point_ap_hand_computed():
    # ranked: +, -, +, -, +  (5 examples, 3 positives) → (rec, prec) after each:
    # (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2), (1, 3/5)
    # max prec at rec ≥ t: t ∈ {0,.1,.2,.3} → 1; {.4,.5,.6} → 2/3; {.7,.8,.9,1} → 3/5
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 0, 1])
    expect = (4 * 1 + 3 * (2 / 3) + 4 * (3 / 5)) / 11
    assert M.voc07_11point_ap(scores, y) == pytest.approx(expect, abs=1e-12)
    # the standard AP on the same ranking: (1/3)(1) + (1/3)(2/3) + (1/3)(3/5)
    assert M.average_precision(scores, y) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3, abs=1e-12)
    # difficult (IGNORE) examples are removed before ranking
    s2 = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    y2 = np.array([IGNORE, 1, 0, 1, 0, 1])
    assert M.voc07_11point_ap(s2, y2) == pytest.approx(expect, abs=1e-12)
    # negatives ranked first: (0,0),(0,0),(1/3,1/3),(2/3,1/2),(1,3/5) → 4·(3/5)+... by hand
    worse = np.array([0.1, 0.9, 0.2, 0.8, 0.3])
    assert M.voc07_11point_ap(worse, y) == pytest.approx((11 * (3 / 5)) / 11, abs=1e-12)


def test_multilabel_bce_ignores_difficult():
    logits = torch.tensor([[2.0, -1.0, 5.0]])
    t = torch.tensor([[1.0, 0.0, float(IGNORE)]])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], t[:, :2])
    assert M.multilabel_bce(logits, t).item() == pytest.approx(ref.item(), rel=1e-6)


def test_stratified_split_fixed_and_disjoint():
    labels = [0] * 10 + [1] * 5 + [2] * 1
    tr, va = D.stratified_split(labels, 0.2, seed=3)
    assert sorted(tr + va) == list(range(16)) and not set(tr) & set(va)
    assert [labels[i] for i in va].count(0) == 2 and [labels[i] for i in va].count(1) == 1
    assert 15 in tr  # a singleton class stays in train
    assert D.stratified_split(labels, 0.2, seed=3) == (tr, va)
    assert D.stratified_split(labels, 0.2, seed=4) != (tr, va)


def test_shuffled_holdout_is_ericssons():
    """ssl-transfer get_train_valid_loader: indices shuffled after np.random.seed(seed), the
    first floor(0.2 n) to val."""
    n = 53
    idx = list(range(n))
    np.random.seed(0)
    np.random.shuffle(idx)
    tr, va = D.holdout_split("shuffled", [0] * n, 0.2, 0)
    assert va == sorted(idx[:10]) and tr == sorted(idx[10:])
    assert D.holdout_split("stratified", [i % 2 for i in range(n)], 0.2, 0) == \
        D.stratified_split([i % 2 for i in range(n)], 0.2, 0)
