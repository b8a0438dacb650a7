"""Classification formats: tiny trees in each on-disk layout, class names and prompt templates."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import formats, open_dataset
from harness.data import prompts as P
from harness.data.classification import FORMATS, load_plain_pickle
from harness.errors import DataError, DataMissing, UnsafePickleError
from harness.suite import DatasetSpec

scipy_io = pytest.importorskip("scipy.io")

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def spec(fmt: str, root, prompts=None, **options) -> DatasetSpec:
    return DatasetSpec(id="ds", type="classification", format=fmt, root=str(root),
                       source="suite.toml", protocols=("zeroshot",), prompts=prompts,
                       options=options)


def img(path: Path, label: int = 0, size=(4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[label % len(COLORS)]).save(path)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------- builders, one per layout
# Each writes a tiny tree and returns (classes, {split: labels}, a file whose removal makes the
# tree incomplete, a substring the DataMissing message must contain).

def build_food101(root: Path):
    base = root / "food-101"
    classes = ["apple_pie", "beef_tartare", "churros"]
    meta = {"train": {c: [f"{c}/{i}" for i in (1, 2)] for c in classes},
            "test": {c: [f"{c}/{i}" for i in (3,)] for c in classes}}
    for s, m in meta.items():
        write(base / "meta" / f"{s}.json", json.dumps(m))
        for k, c in enumerate(classes):
            for rel in m[c]:
                img(base / "images" / f"{rel}.jpg", k)
    return classes, {"train": [0, 0, 1, 1, 2, 2], "test": [0, 1, 2]}, \
        base / "meta" / "test.json", "food-101/meta/test.json"


def _cifar_batch(path: Path, labels, key: str, protocol: int) -> None:
    data = np.zeros((len(labels), 3, 32, 32), np.uint8)
    for i, y in enumerate(labels):
        data[i] = np.asarray(COLORS[y], np.uint8)[:, None, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"batch_label": "tiny", key: list(labels), "data": data.reshape(len(labels), -1),
             "filenames": [f"{i}.png" for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(entry, protocol=protocol))


def build_cifar10(root: Path):
    base = root / "cifar-10-batches-py"
    train = [[0], [1], [2], [0], [1]]
    for i, ys in enumerate(train, 1):
        _cifar_batch(base / f"data_batch_{i}", ys, "labels", protocol=2)  # bytes via _codecs
    _cifar_batch(base / "test_batch", [2, 1, 0], "labels", protocol=2)
    classes = ["airplane", "automobile", "bird"]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}, protocol=2))
    return classes, {"train": [0, 1, 2, 0, 1], "test": [2, 1, 0]}, base / "test_batch", \
        "cifar-10-batches-py"


def build_cifar100(root: Path):
    base = root / "cifar-100-python"
    _cifar_batch(base / "train", [0, 1, 2, 1], "fine_labels", protocol=5)
    _cifar_batch(base / "test", [1, 2], "fine_labels", protocol=4)
    classes = ["apple", "aquarium_fish", "baby"]
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": classes}))
    return classes, {"train": [0, 1, 2, 1], "test": [1, 2]}, base / "meta", "cifar-100-python"


SUN_CLASSES = ["abbey", "apartment_building/outdoor", "bakery/shop"]


def build_sun397(root: Path):
    base = root / "SUN397"
    write(base / "ClassName.txt", "/a/abbey\n/a/apartment_building/outdoor\n/b/bakery/shop\n")
    for k, c in enumerate(SUN_CLASSES):
        for i in range(5):  # odd count: 2 train, 3 test
            img(base / c[0] / c / f"sun_{k}{i}.jpg", k)
    return SUN_CLASSES, {"train": [0] * 2 + [1] * 2 + [2] * 2, "test": [0] * 3 + [1] * 3 + [2] * 3}, \
        base / "ClassName.txt", "SUN397/ClassName.txt"


def _struct(rows: list[dict]) -> np.ndarray:
    dtype = [(k, "O") for k in rows[0]]
    return np.array([tuple(r[k] for k, _ in dtype) for r in rows], dtype=dtype).reshape(1, -1)


def build_cars(root: Path):
    base = root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    (base / "devkit").mkdir(parents=True)
    scipy_io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(classes, dtype=object).reshape(1, -1)})
    labels = {"train": [0, 1, 2, 2], "test": [1, 0, 2]}
    for s, annos in (("train", base / "devkit" / "cars_train_annos.mat"),
                     ("test", base / "cars_test_annos_withlabels.mat")):
        rows = []
        for i, y in enumerate(labels[s]):
            name = f"{i + 1:05d}.jpg"
            img(base / f"cars_{s}" / name, y)
            rows.append({"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 3, "bbox_y2": 3,
                         "class": y + 1, "fname": name})
        scipy_io.savemat(annos, {"annotations": _struct(rows)})
    return classes, labels, base / "cars_test_annos_withlabels.mat", "cars_test_annos_withlabels.mat"


def build_fgvc_aircraft(root: Path):
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "F-16A/B"]
    write(data / "variants.txt", "\n".join(classes) + "\n")
    labels = {"train": [0, 1, 2], "val": [2, 1], "test": [0, 0, 1, 2]}
    n = 1000000
    for s, ys in labels.items():
        lines = []
        for y in ys:
            n += 1
            img(data / "images" / f"{n}.jpg", y)
            lines.append(f"{n} {classes[y]}")
        write(data / f"images_variant_{s}.txt", "\n".join(lines) + "\n")
    return classes, labels, data / "images_variant_val.txt", "images_variant_{train,val,test}.txt"


def build_dtd(root: Path):
    base = root / "dtd" / "dtd"
    classes = ["banded", "blotchy", "braided"]
    labels = {"train": [0, 1, 2], "val": [0, 2], "test": [1, 2, 0]}
    for s, ys in labels.items():
        lines = []
        for i, y in enumerate(ys):
            name = f"{classes[y]}_{s}_{i}.jpg"
            img(base / "images" / classes[y] / name, y)
            lines.append(f"{classes[y]}/{name}")
        write(base / "labels" / f"{s}1.txt", "\n".join(lines) + "\n")
    return classes, labels, base / "labels" / "test1.txt", "dtd/dtd/labels/{train1,val1,test1}.txt"


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def build_mnist(root: Path):
    raw = root / "MNIST" / "raw"
    labels = {"train": [3, 1, 4, 1, 5], "test": [9, 2, 6]}
    for s, prefix, gz in (("train", "train", True), ("test", "t10k", False)):
        ys = np.asarray(labels[s])
        _idx(raw / f"{prefix}-images-idx3-ubyte", (ys[:, None, None] * 25 * np.ones((1, 6, 6))), gz)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", ys, gz)
    return [str(i) for i in range(10)], labels, raw / "t10k-labels-idx1-ubyte", \
        "MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz]"


def build_flowers(root: Path):
    base = root / "flowers-102"
    all_labels = [1, 2, 3, 1, 2, 3, 3, 2]  # 1-based, per image id 1..8
    for i, y in enumerate(all_labels, 1):
        img(base / "jpg" / f"image_{i:05d}.jpg", y - 1)
    scipy_io.savemat(base / "imagelabels.mat", {"labels": np.array([all_labels])})
    setid = {"trnid": [1, 2, 3], "valid": [4, 5], "tstid": [6, 7, 8]}
    scipy_io.savemat(base / "setid.mat", {k: np.array([v]) for k, v in setid.items()})
    labels = {s: [all_labels[i - 1] - 1 for i in setid[k]]
              for s, k in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}
    return P.vendored_classnames("flowers"), labels, base / "setid.mat", "flowers-102/"


def _stl(path: Path, labels) -> np.ndarray:
    imgs = np.zeros((len(labels), 96, 96, 3), np.uint8)
    for i, y in enumerate(labels):
        imgs[i] = COLORS[y]
        imgs[i, 0, 5] = (7, 8, 9)  # an asymmetric pixel: row 0, column 5
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imgs.transpose(0, 3, 2, 1).tobytes())  # [C, W, H], as STL10 stores them
    return imgs


def build_stl10(root: Path):
    base = root / "stl10_binary"
    classes = ["airplane", "bird", "car"]
    labels = {"train": [0, 1, 2, 1], "test": [2, 0]}
    for s, ys in labels.items():
        _stl(base / f"{s}_X.bin", ys)
        (base / f"{s}_y.bin").write_bytes(bytes(y + 1 for y in ys))
    write(base / "class_names.txt", "\n".join(classes) + "\n")
    return classes, labels, base / "test_y.bin", "stl10_binary/"


def build_gtsrb(root: Path):
    base = root / "gtsrb"
    train = base / "GTSRB" / "Training"
    for y, n in ((0, 2), (1, 1), (2, 2)):
        for i in range(n):
            img(train / f"{y:05d}" / f"00000_{i:05d}.ppm", y)
        write(train / f"{y:05d}" / f"GT-{y:05d}.csv", "Filename;ClassId\n")  # ignored
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, y in enumerate([2, 0, 1]):
        img(base / "GTSRB" / "Final_Test" / "Images" / f"{i:05d}.ppm", y)
        rows.append(f"{i:05d}.ppm;4;4;0;0;3;3;{y}")
    write(base / "GT-final_test.csv", "\n".join(rows) + "\n")
    return P.vendored_classnames("gtsrb"), {"train": [0, 0, 1, 2, 2], "test": [2, 0, 1]}, \
        base / "GT-final_test.csv", "gtsrb/GT-final_test.csv"


def _folders(base: Path, layout: dict[str, dict[str, int]], ext: str) -> None:
    for split, per_class in layout.items():
        for k, (cls, n) in enumerate(per_class.items()):
            for i in range(n):
                img(base / split / cls / f"{i}{ext}", k)


def build_country211(root: Path):
    counts = {"AD": 2, "AE": 1, "AF": 1}
    _folders(root / "country211", {"train": counts, "valid": {"AD": 1, "AE": 1, "AF": 1},
                                   "test": {"AD": 1, "AE": 2, "AF": 1}}, ".jpg")
    return ["AD", "AE", "AF"], {"train": [0, 0, 1, 2], "val": [0, 1, 2], "test": [0, 1, 1, 2]}, \
        root / "country211" / "valid", "country211/{train,valid,test}"


def build_renderedsst2(root: Path):
    _folders(root / "rendered-sst2", {"train": {"negative": 2, "positive": 1},
                                      "valid": {"negative": 1, "positive": 1},
                                      "test": {"negative": 1, "positive": 2}}, ".png")
    return ["negative", "positive"], {"train": [0, 0, 1], "val": [0, 1], "test": [0, 1, 1]}, \
        root / "rendered-sst2" / "test", "rendered-sst2/{train,valid,test}"


def build_imagenetv2(root: Path):
    base = root / "imagenetv2-matched-frequency-format-val"
    for name in ("0", "1", "10"):
        for i in range(2):
            img(base / name / f"{i}.jpeg", int(name))
    return [str(i) for i in range(1000)], {"test": [0, 0, 1, 1, 10, 10]}, base, \
        "imagenetv2-matched-frequency-format-val"


def build_imagenet1k(root: Path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    _folders(root, {"val": {w: 2 for w in wnids}, "train": {w: 1 for w in wnids}}, ".JPEG")
    return wnids, {"test": [0, 0, 1, 1, 2, 2], "train": [0, 1, 2]}, root / "val", "root/val/<wnid>"


BUILDERS = {name[len("build_"):]: fn for name, fn in globals().items() if name.startswith("build_")}


def test_every_format_has_a_builder_and_is_registered():
    names = {f.name for f in FORMATS}
    assert set(BUILDERS) == names
    assert len(names) == 15
    table = formats()
    for name in names | {"imagefolder"}:
        assert table[name][1] == ("classification",)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_tiny_tree_loads(fmt, tmp_path):
    classes, labels, _, _ = BUILDERS[fmt](tmp_path)
    ds = open_dataset(spec(fmt, tmp_path))
    assert ds.classnames == classes
    assert sorted(ds.splits) == sorted(labels)
    for s, expected in labels.items():
        split = ds.split(s)
        assert sorted(split.labels.tolist()) == sorted(expected), s
        assert split.labels.dtype == np.int64
        im = split.load(0)
        assert im.mode == "RGB"
        # the colour written for image i encodes its label
        for i in range(len(split)):
            px = split.load(i).convert("RGB").getpixel((1, 1))
            if fmt != "mnist":
                want = COLORS[int(split.labels[i]) % len(COLORS)]
                assert max(abs(a - b) for a, b in zip(px, want)) < 40, (s, i, px, want)
        assert split.fingerprint() == ds.split(s).fingerprint()


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_missing_root_and_incomplete_tree_raise_data_missing(fmt, tmp_path):
    with pytest.raises(DataMissing) as e:
        open_dataset(spec(fmt, tmp_path / "nowhere"))
    origin = next(f.origin for f in FORMATS if f.name == fmt)
    assert "expected root/" in str(e.value) and origin in str(e.value)
    _, _, key_file, layout_hint = BUILDERS[fmt](tmp_path)
    (shutil.rmtree if key_file.is_dir() else os.remove)(key_file)
    with pytest.raises(DataMissing) as e:
        open_dataset(spec(fmt, tmp_path))
    msg = str(e.value)
    assert str(key_file) in msg and layout_hint in msg and "layout" in msg


def test_mnist_pixels_and_array_fingerprint_is_cheap(tmp_path):
    build_mnist(tmp_path)
    ds = open_dataset(spec("mnist", tmp_path))
    test = ds.split("test")
    assert test.labels.tolist() == [9, 2, 6]
    assert test.load(1).getpixel((0, 0)) == (50, 50, 50)
    assert ds.split("train").load(0).getpixel((2, 2)) == (75, 75, 75)  # from the .gz file
    assert any("t10k-images-idx3-ubyte" in p for p in test.fingerprint_parts)
    before = test.fingerprint()
    f = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    os.utime(f, ns=(1, 1))
    assert open_dataset(spec("mnist", tmp_path)).split("test").fingerprint() != before


def test_stl10_orientation_and_reader_pickles_small(tmp_path):
    build_stl10(tmp_path)
    split = open_dataset(spec("stl10", tmp_path)).split("train")
    im = split.load(0)
    assert im.size == (96, 96)
    assert im.getpixel((5, 0)) == (7, 8, 9) and im.getpixel((0, 5)) == COLORS[0]
    clone = pickle.loads(pickle.dumps(split.reader))
    assert len(pickle.dumps(split.reader)) < 2000
    assert clone(3).getpixel((5, 0)) == (7, 8, 9)


def test_sun397_uses_partition_01_when_present(tmp_path):
    build_sun397(tmp_path)
    base = tmp_path / "SUN397"
    write(base / "Training_01.txt", "/a/abbey/sun_00.jpg\n/b/bakery/shop/sun_20.jpg\n")
    write(base / "Testing_01.txt", "/a/apartment_building/outdoor/sun_10.jpg\n/a/abbey/sun_01.jpg\n")
    ds = open_dataset(spec("sun397", tmp_path))
    assert ds.split("train").labels.tolist() == [0, 2]
    assert ds.split("test").labels.tolist() == [1, 0]
    assert ds.split("test").items[0].endswith("a/apartment_building/outdoor/sun_10.jpg")
    assert "partition 01" in ds.meta["split_rule"]


def test_sun397_fallback_split_is_deterministic_and_disjoint(tmp_path):
    build_sun397(tmp_path)
    a = open_dataset(spec("sun397", tmp_path))
    b = open_dataset(spec("sun397", tmp_path))
    assert a.split("train").items == b.split("train").items
    assert not set(a.split("train").items) & set(a.split("test").items)
    assert len(a.split("train")) + len(a.split("test")) == 15
    assert "crc32" in a.meta["split_rule"]


def test_listed_image_missing_is_data_error(tmp_path):
    build_dtd(tmp_path)
    os.remove(tmp_path / "dtd" / "dtd" / "images" / "banded" / "banded_test_2.jpg")
    with pytest.raises(DataError, match="1 of the 3 images listed for split 'test'.*banded_test_2"):
        open_dataset(spec("dtd", tmp_path))


def test_imagenetv2_labels_are_folder_numbers_not_lexical_order(tmp_path):
    build_imagenetv2(tmp_path)
    split = open_dataset(spec("imagenetv2", tmp_path)).split("test")
    for path, y in zip(split.items, split.labels):
        assert Path(path).parent.name == str(y)


# ----------------------------------------------------------------------------- imagefolder

def _imagefolder(root: Path, splits=("train", "test"), classes=("cat", "dog", "eel")):
    for s in splits:
        for k, c in enumerate(classes):
            img(root / s / c / "a.png", k)
            img(root / s / c / "sub" / "b.JPG", k)
        (root / s / classes[0] / "notes.txt").write_text("not an image")
        (root / s / classes[0] / ".hidden.png").write_bytes(b"")


def test_imagefolder_loads_sorted_classes_and_all_extensions(tmp_path):
    _imagefolder(tmp_path, ("train", "val", "test"), classes=("eel", "cat", "dog"))
    img(tmp_path / "test" / "cat" / "c.WebP", 1)
    img(tmp_path / "test" / "cat" / "d.tiff", 1)
    ds = open_dataset(spec("imagefolder", tmp_path))
    assert ds.classnames == ["cat", "dog", "eel"]
    assert sorted(ds.splits) == ["test", "train", "val"]
    assert len(ds.split("train")) == 6 and len(ds.split("test")) == 8
    assert ds.split("test").labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert ds.split("test").load(6).getpixel((0, 0)) == COLORS[0]  # eel/a.png: written as colour 0


def test_imagefolder_train_is_optional_but_test_is_not(tmp_path):
    _imagefolder(tmp_path, ("test",))
    assert sorted(open_dataset(spec("imagefolder", tmp_path)).splits) == ["test"]
    shutil.rmtree(tmp_path / "test")
    _imagefolder(tmp_path, ("train",))
    with pytest.raises(DataMissing, match=r"no test/ folder; expected root/test/<class>/<image>"):
        open_dataset(spec("imagefolder", tmp_path))
    with pytest.raises(DataMissing, match="folder not found"):
        open_dataset(spec("imagefolder", tmp_path / "absent"))


def test_imagefolder_class_mismatch_names_both_folders(tmp_path):
    _imagefolder(tmp_path, ("train",), classes=("cat", "dog"))
    _imagefolder(tmp_path, ("test",), classes=("cat", "eel"))
    with pytest.raises(DataError) as e:
        open_dataset(spec("imagefolder", tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "test") in msg and str(tmp_path / "train") in msg
    assert "eel" in msg and "dog" in msg


# --------------------------------------------------------------------------- unsafe pickles

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["test_batch", "batches.meta"])
def test_malicious_cifar_pickle_is_refused_without_running(tmp_path, where):
    build_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = {"data": np.zeros((1, 3072), np.uint8), "labels": [_Evil(marker)]}
    (tmp_path / "cifar-10-batches-py" / where).write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"references the forbidden global (posix|os|nt)\.system") as e:
        open_dataset(spec("cifar10", tmp_path))
    assert where in str(e.value)
    assert isinstance(e.value, DataError)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"f": eval}))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_plain_pickle(p)
    p.write_bytes(pickle.dumps({"a": [1, 2.0, "s", b"b", (3,)], "x": np.arange(3, dtype=np.int16)},
                               protocol=2))
    obj = load_plain_pickle(p)
    assert obj["a"] == [1, 2.0, "s", b"b", (3,)] and obj["x"].tolist() == [0, 1, 2]


def test_python2_cifar_pickle_loads(tmp_path):
    # What the real CIFAR files hold: Python 2 str opcodes, numpy.core.multiarray._reconstruct.
    p = tmp_path / "py2.pkl"
    p.write_bytes(
        b"\x80\x02}q\x00(U\x04dataq\x01"
        b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85U\x01b\x87Rq\x04"
        b"(K\x01K\x01K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNN"
        b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03\x01\x02\xfftbU\x06labels]K\x07au.")
    obj = load_plain_pickle(p)
    assert obj["labels"] == [7]
    assert obj["data"].dtype == np.uint8 and obj["data"].tolist() == [[1, 2, 255]]


def test_download_without_a_torchvision_downloader_still_skips(tmp_path):
    s = DatasetSpec(id="ds", type="classification", format="cars", root=str(tmp_path),
                    source="suite.toml", protocols=("zeroshot",), download=True)
    with pytest.raises(DataMissing, match="StanfordCars layout"):
        open_dataset(s)


# ------------------------------------------------------------------------------- classnames

@pytest.mark.parametrize("fmt, raw, expected", [
    ("food101", ["apple_pie", "beef_tartare"], ["apple pie", "beef tartare"]),
    ("sun397", ["abbey", "apartment_building/outdoor"], ["abbey", "apartment building outdoor"]),
    ("cifar10", ["airplane", "automobile"], ["airplane", "automobile"]),
    ("cifar100", ["aquarium_fish"], ["aquarium_fish"]),
    ("cars", ["Acura RL Sedan 2012"], ["Acura RL Sedan 2012"]),
    ("fgvc_aircraft", ["F-16A/B"], ["F-16A/B"]),
    ("dtd", ["banded"], ["banded"]),
    ("stl10", ["airplane"], ["airplane"]),
    ("renderedsst2", ["negative", "positive"], ["negative", "positive"]),
    ("imagefolder", ["golden_retriever"], ["golden_retriever"]),
])
def test_classnames_from_the_dataset_list(fmt, raw, expected):
    assert P.classnames_for(spec(fmt, "/r"), raw) == expected


def test_classnames_from_the_vendored_json():
    assert P.classnames_for(spec("mnist", "/r"), [str(i) for i in range(10)])[3] == "3"
    gtsrb = P.classnames_for(spec("gtsrb", "/r"), [f"{i:05d}" for i in range(43)])
    assert gtsrb[0] == "red and white circle 20 kph speed limit"
    country = P.classnames_for(spec("country211", "/r"), [f"C{i}" for i in range(211)])
    assert country[:2] == ["Andorra", "United Arab Emirates"]
    flowers = P.classnames_for(spec("flowers", "/r"), list(range(102)))
    assert flowers[0] == "pink primrose"
    v2 = P.classnames_for(spec("imagenetv2", "/r"), [str(i) for i in range(1000)])
    assert v2 == P.vendored_classnames("imagenet1k") and v2[0] == "tench"
    in1k = P.classnames_for(spec("imagenet1k", "/r"), [f"n{i:08d}" for i in range(1000)])
    assert in1k == v2


def test_classnames_length_mismatch_names_both_numbers_and_key(tmp_path):
    build_country211(tmp_path)
    ds = open_dataset(spec("country211", tmp_path))
    with pytest.raises(DataError) as e:
        P.classnames_for(spec("country211", tmp_path), ds.classnames)
    msg = str(e.value)
    assert "211 class names" in msg and "3 classes" in msg and "'country211'" in msg


def test_prompts_key_overrides_format():
    s = spec("imagefolder", "/r", prompts="mnist")
    assert P.classnames_for(s, list("abcdefghij")) == [str(i) for i in range(10)]
    assert P.templates_for(s) == ['a photo of the number: "{c}".']
    s = spec("imagefolder", "/r", prompts="food101")
    assert P.classnames_for(s, ["apple_pie"]) == ["apple pie"]
    assert P.templates_for(s) == ["a photo of {c}, a type of food."]


def test_templates_defaults():
    imagenet = P.vendored_templates("imagenet1k")
    assert len(imagenet) == 80
    assert P.templates_for(spec("imagefolder", "/r")) == imagenet
    assert P.templates_for(spec("imagenetv2", "/r")) == imagenet
    assert P.templates_for(spec("cifar10", "/r"))[0] == "a photo of a {c}."
    assert len(P.templates_for(spec("cifar10", "/r"))) == 18


def test_custom_classnames_and_templates_files(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("red panda\n\n  snow leopard  \n")
    tpl = tmp_path / "templates.json"
    tpl.write_text(json.dumps(["a photo of a {c}.", "art of the {c}."]))
    s = spec("imagefolder", "/r", classnames=str(names), templates=str(tpl))
    assert P.classnames_for(s, ["a", "b"]) == ["red panda", "snow leopard"]
    assert P.templates_for(s) == ["a photo of a {c}.", "art of the {c}."]
    # a CLIP_benchmark-style JSON object, keyed by the prompts key
    keyed = tmp_path / "de.json"
    keyed.write_text(json.dumps({"cifar10": ["Flugzeug", "Auto"], "mnist": ["0"]}))
    assert P.classnames_for(spec("cifar10", "/r", classnames=str(keyed)), ["x", "y"]) == \
        ["Flugzeug", "Auto"]
    with pytest.raises(DataError, match="no key 'dtd'"):
        P.classnames_for(spec("dtd", "/r", classnames=str(keyed)), ["x"])
    # the file is re-read when it changes (cache keyed on size and mtime)
    names.write_text("one\ntwo\nthree\n")
    with pytest.raises(DataError) as e:
        P.classnames_for(s, ["a", "b"])
    assert str(names) in str(e.value) and "3 class names" in str(e.value) and "2 classes" in str(e.value)


def test_bad_template_files(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a {c}.\nno placeholder here\n")
    with pytest.raises(DataError, match="'no placeholder here' has no '\\{c\\}'"):
        P.templates_for(spec("cifar10", "/r", templates=str(bad)))
    broken = tmp_path / "t.json"
    broken.write_text("[1, 2")
    with pytest.raises(DataError, match="not valid JSON"):
        P.templates_for(spec("cifar10", "/r", templates=str(broken)))
    with pytest.raises(DataError, match="file not found"):
        P.templates_for(spec("cifar10", "/r", templates=str(tmp_path / "absent.txt")))
