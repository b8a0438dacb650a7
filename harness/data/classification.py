"""The study's 14 general datasets (+ ImageNet-1k), each read from torchvision's on-disk layout.

One table row per format: the torchvision class whose layout is read, the expected files under
``root`` (quoted by :class:`DataMissing`), a small loader and, where torchvision can fetch the
data, what to download when the suite says ``download = true`` (nothing is downloaded
otherwise, and nothing at all by the tests).

==============  ==============================================================  ================
format          layout under ``root``                                           splits
==============  ==============================================================  ================
food101         food-101/meta/{train,test}.json, food-101/images/<cls>/<id>.jpg  train test
cifar10         cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}   train test
cifar100        cifar-100-python/{train,test,meta}                              train test
sun397          SUN397/ClassName.txt, SUN397/<l>/<cls>/sun_*.jpg (+ partitions)  train test
cars            stanford_cars/devkit/{cars_meta,cars_train_annos}.mat,          train test
                stanford_cars/cars_test_annos_withlabels.mat, cars_{train,test}/
fgvc_aircraft   fgvc-aircraft-2013b/data/{variants.txt,images_variant_*.txt,     train val test
                images/}
dtd             dtd/dtd/labels/{train,val,test}1.txt, dtd/dtd/images/<cls>/      train val test
mnist           MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]     train test
flowers         flowers-102/{jpg/,imagelabels.mat,setid.mat}                    train val test
stl10           stl10_binary/{train,test}_{X,y}.bin, class_names.txt            train test
gtsrb           gtsrb/GTSRB/Training/<000NN>/*.ppm, gtsrb/GTSRB/Final_Test/      train test
                Images/*.ppm, gtsrb/GT-final_test.csv
country211      country211/{train,valid,test}/<ISO code>/*.jpg                  train val test
renderedsst2    rendered-sst2/{train,valid,test}/{negative,positive}/*.png      train val test
imagenetv2      imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg or        test
                ImageNetV2-matched-frequency/<0..999>/*.jpeg (CLIP_benchmark)
imagenet1k      val/<wnid>/*.JPEG (train/<wnid>/ optional)                      (train) test
==============  ==============================================================  ================

``test`` is always the standard test split (ImageNet: the validation set); ``val`` appears only
where the dataset defines one (Country211's and Rendered SST2's ``valid`` folders included).

Class order and names (``Dataset.classnames`` is the dataset's own list; the prompt names are
made by :func:`harness.data.prompts.classnames_for`): food101 sorted meta keys; cifar from
``batches.meta``/``meta``; sun397 ``ClassName.txt`` order; cars ``cars_meta.mat``; fgvc_aircraft
``variants.txt`` (annotation level "variant"); dtd sorted classes of partition 1; mnist "0".."9";
flowers and gtsrb the CLIP_benchmark names (they ship no class list); stl10
``class_names.txt``; country211 sorted ISO-code folders; renderedsst2 negative, positive;
imagenetv2 "0".."999" (label = folder number, *not* the lexical folder order); imagenet1k the
sorted wnids.

SUN397 split: torchvision's SUN397 has no split.  When the official partition files
``Training_01.txt`` and ``Testing_01.txt`` (from Partitions.zip, lines ``/a/abbey/sun_x.jpg``)
lie in ``root/SUN397/``, ``root/SUN397/Partitions/``, ``root/`` or ``root/Partitions/``, the
first partition is used (50 train + 50 test images per class, as in the CLIP paper and tfds'
``standard-part1-120k``).  With the dataset option ``sun397_split = "all"`` every
``sun_*.jpg`` below ``root/SUN397/`` is both the train and the test split, as in CLIP_benchmark
(torchvision's SUN397 has no split: its zero-shot runs on all 108,754 images and its probe
trains on the images it tests on); opt-in, for comparisons with CLIP_benchmark numbers only.
Otherwise every class's images (sorted by path) are split 50/50 by a
permutation seeded with the CRC32 of the class name: ``n // 2`` train, the rest test.  The
rule used is recorded in ``Dataset.meta["split_rule"]``; numbers from the fallback are not
comparable with published ones.

The array formats (cifar, mnist, stl10) give ``items = range(N)`` and a picklable
:class:`ArrayImages` reader (memory-mapped where the file is uncompressed); their fingerprint is
the source files' path, size and mtime.  CIFAR's pickles are read by the one restricted unpickler,
:mod:`harness.safe_pickle` (plain containers and numeric numpy arrays only); anything else raises
:class:`UnsafePickleError` before it runs.  The ``.mat`` files (cars, flowers) need scipy.
"""

from __future__ import annotations

import csv
import functools
import gzip
import inspect
import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from harness.data.base import Dataset, Split, file_fingerprint, register_format
from harness.data.imagefolder import check_same_classes, class_folders, folder_split
from harness.data.index import list_fingerprint, open_listed, open_tree
from harness.data.prompts import vendored_classnames
from harness.errors import DataError, DataMissing, UnsafePickleError
from harness.safe_pickle import safe_load

# ----------------------------------------------------------------------------------- helpers


class _Absent(Exception):
    """A file or folder of the layout is missing (turned into DataMissing by the opener)."""

    def __init__(self, path: Path | str):
        super().__init__(str(path))
        self.path = str(path)


def _need(path: Path) -> Path:
    if not os.path.exists(path):
        raise _Absent(path)
    return path


class _Loaded(NamedTuple):
    classes: list[str]
    splits: dict[str, Split]
    meta: dict[str, Any] = {}


@dataclass(frozen=True)
class _Ctx:
    """What some loaders need beyond ``root``: the dataset options and the index folder."""

    options: dict[str, Any] = field(default_factory=dict)
    index_dir: str | os.PathLike | None = None


def _path_split(
    name: str,
    items: Sequence[os.PathLike | str],
    labels: Sequence[int] | np.ndarray,
    index_dir: str | os.PathLike | None = None,
) -> Split:
    """A split of listed image files; a listed file that is missing or not a regular file is a
    DataError.  The files are checked through the persisted list index
    (:func:`harness.data.index.open_listed`), whose fingerprint (path, size, mtime of each file)
    is the split's: a warm open stats the folders, not the images."""
    items = [os.fspath(p) for p in items]
    listed = open_listed(items, index_dir)
    missing = listed.missing()
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(items)} images listed for split {name!r} "
            f"are missing, e.g. {items[missing[0]]}"
        )
    bad = listed.first_problem()
    if bad is not None:
        raise DataError(
            f"{len(listed.problems)} of the {len(items)} images listed for split {name!r} "
            f"cannot be used, e.g. {items[bad[0]]}: {bad[1]}"
        )
    return Split(
        name,
        items,
        np.asarray(labels, dtype=np.int64),
        fingerprint_parts=[f"listed-v1|{listed.fingerprint}"],
    )


def _lines(path: Path) -> list[str]:
    with open(_need(path), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _loadmat(path: Path) -> dict[str, Any]:
    _need(path)
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        raise DataError(
            f"{path}: reading MATLAB .mat files needs scipy, which is not installed (pip install scipy)"
        ) from None
    try:
        return loadmat(path, squeeze_me=True)
    except Exception as e:
        raise DataError(f"{path}: not a readable .mat file ({e})") from None


def _names(key: str) -> list[str]:
    names = vendored_classnames(key)
    assert names is not None, key
    return names


class ArrayImages:
    """Picklable reader of image ``i`` from a uint8 array ``(N, ...)``.

    Either an in-memory ``array`` or a file region (``path``, ``offset``, ``shape``) that is
    memory-mapped on first use (and not pickled: a worker maps it again).  ``axes`` reorders one
    image's axes into (H, W[, C]).
    """

    def __init__(
        self,
        array: np.ndarray | None = None,
        *,
        path: str | None = None,
        offset: int = 0,
        shape: tuple[int, ...] | None = None,
        axes: tuple[int, ...] | None = None,
    ):
        self._array = array
        self.path, self.offset, self.shape, self.axes = path, offset, shape, axes

    def array(self) -> np.ndarray:
        if self._array is None:
            assert self.path is not None
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape)
        return self._array

    def __call__(self, i: int) -> Image.Image:
        a = self.array()[int(i)]
        if self.axes is not None:
            a = a.transpose(self.axes)
        return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state


def _array_split(
    name: str, reader: ArrayImages, n: int, labels: np.ndarray, sources: Sequence[Path]
) -> Split:
    if len(labels) != n:
        raise DataError(
            f"split {name!r}: {n} images but {len(labels)} labels in {', '.join(map(str, sources))}"
        )
    return Split(
        name,
        range(n),
        np.asarray(labels, dtype=np.int64),
        reader=reader,
        fingerprint_parts=[file_fingerprint(p) for p in sources],
    )


# ------------------------------------------------------------------------ restricted pickles


def load_plain_pickle(path: Path) -> Any:
    """Unpickle a file that may hold only containers, str/bytes/numbers and numeric arrays.

    The one restricted unpickler, :func:`harness.safe_pickle.safe_load` (Python 2 strings read
    as latin-1, as torchvision reads CIFAR).
    """
    return safe_load(_need(path), encoding="latin1", expected="a CIFAR python batch (a pickled dict)")


def _pickle_dict(path: Path) -> dict[str, Any]:
    obj = load_plain_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


# ------------------------------------------------------------------------------- the loaders


def _food101(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    base = root / "food-101"
    metas = {}
    for s in ("train", "test"):
        with open(_need(base / "meta" / f"{s}.json"), encoding="utf-8") as f:
            metas[s] = json.load(f)
    images = _need(base / "images")
    classes = sorted(metas["test"])
    splits = {}
    for s, meta in metas.items():
        if sorted(meta) != classes:
            raise DataError(
                f"{base / 'meta' / 'train.json'} and {base / 'meta' / 'test.json'} list different classes"
            )
        items, labels = [], []
        for i, cls in enumerate(classes):
            items += [images.joinpath(*f"{rel}.jpg".split("/")) for rel in meta[cls]]
            labels += [i] * len(meta[cls])
        splits[s] = _path_split(s, items, labels, ctx.index_dir)
    return _Loaded(classes, splits)


def _cifar(
    folder: str,
    files: dict[str, tuple[str, ...]],
    meta_file: str,
    names_key: str,
    labels_key: str,
    root: Path,
) -> _Loaded:
    base = root / folder
    paths = {s: [_need(base / f) for f in fs] for s, fs in files.items()}
    meta_path = _need(base / meta_file)
    meta = _pickle_dict(meta_path)
    classes = meta.get(names_key)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{meta_path}: expected a list of class names under {names_key!r}")
    splits = {}
    for s, batch_paths in paths.items():
        data, labels = [], []
        for p in batch_paths:
            d = _pickle_dict(p)
            x, y = d.get("data"), d.get(labels_key)
            if (
                not isinstance(x, np.ndarray)
                or x.dtype != np.uint8
                or x.ndim != 2
                or x.shape[1] != 3 * 32 * 32
                or not isinstance(y, list)
                or len(y) != len(x)
            ):
                raise DataError(f"{p}: expected 'data' uint8 [N, 3072] and {labels_key!r} a list of N labels")
            data.append(x)
            labels.extend(y)
        arr = np.concatenate(data).reshape(-1, 3, 32, 32)
        splits[s] = _array_split(
            s, ArrayImages(arr, axes=(1, 2, 0)), len(arr), np.asarray(labels), batch_paths
        )
    return _Loaded(list(classes), splits)


SUN397_SPLITS = ("partition01", "all")


def _sun397(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    base = _need(root / "SUN397")
    folders = [line.lstrip("/") for line in _lines(base / "ClassName.txt")]  # "a/abbey"
    classes = [f[2:] for f in folders]
    index = {c: i for i, c in enumerate(classes)}
    choice = ctx.options.get("sun397_split", "partition01")
    if choice not in SUN397_SPLITS:
        raise DataError(f"sun397_split = {choice!r}; expected one of {', '.join(SUN397_SPLITS)}")
    if choice == "all":
        # CLIP_benchmark's SUN397 (torchvision's, which has no split): every sun_*.jpg below
        # SUN397/, label from its folder; the probe trains on the images it is tested on.
        tree = open_tree(base, (".jpg",), ctx.index_dir)
        items, labels, sizes, mtimes = [], [], [], []
        for rel, size, mtime in zip(tree.files, tree.sizes, tree.mtimes):
            if not rel.rsplit("/", 1)[-1].startswith("sun_"):
                continue
            cls = "/".join(rel.split("/")[1:-1])
            if cls not in index:
                raise DataError(f"{base / rel}: its folder {cls!r} is no class of ClassName.txt")
            items.append(os.fspath(base / rel))
            labels.append(index[cls])
            sizes.append(size)
            mtimes.append(mtime)
        if not items:
            raise _Absent(base / "<letter>/<class>/sun_*.jpg")
        rule = (
            "all images, train = test (sun397_split = 'all', as CLIP_benchmark's torchvision "
            "SUN397); not comparable with partition-01 numbers"
        )
        # path, size and mtime of each image, as the persisted listing recorded them
        fp_parts = [f"listed-v1|{list_fingerprint(items, sizes, mtimes)}"]
        y = np.asarray(labels, dtype=np.int64)
        test = Split("test", items, y, fingerprint_parts=fp_parts)
        train = Split("train", items, y, fingerprint_parts=fp_parts)
        return _Loaded(classes, {"train": train, "test": test}, {"split_rule": rule})
    part_dirs = (base, base / "Partitions", root, root / "Partitions")
    part = next(
        (d for d in part_dirs if (d / "Training_01.txt").is_file() and (d / "Testing_01.txt").is_file()), None
    )
    splits = {}
    if part is not None:
        rule = f"official partition 01 ({part / 'Training_01.txt'}, {part / 'Testing_01.txt'})"
        for s, fname in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
            items, labels = [], []
            for line in _lines(part / fname):
                rel = line.lstrip("/")
                cls = "/".join(rel.split("/")[1:-1])
                if cls not in index:
                    raise DataError(f"{part / fname}: {line!r} is in no class of ClassName.txt")
                items.append(os.fspath(base / rel))
                labels.append(index[cls])
            splits[s] = _path_split(s, items, labels, ctx.index_dir)
    else:
        rule = "per-class 50/50 split seeded by crc32(class name) (no Training_01/Testing_01.txt)"
        parts: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
        for i, (cls, folder) in enumerate(zip(classes, folders)):
            d = base / folder
            files = sorted(d.glob("sun_*.jpg")) if d.is_dir() else []
            perm = np.random.default_rng(zlib.crc32(cls.encode())).permutation(len(files))
            cut = len(files) // 2
            for s, idx in (("train", sorted(perm[:cut])), ("test", sorted(perm[cut:]))):
                parts[s][0].extend(files[j] for j in idx)
                parts[s][1].extend([i] * len(idx))
        if not parts["test"][0]:
            raise _Absent(base / "<letter>/<class>/sun_*.jpg")
        splits = {s: _path_split(s, *v, ctx.index_dir) for s, v in parts.items()}
    return _Loaded(classes, splits, {"split_rule": rule})


def _cars(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    base = root / "stanford_cars"
    devkit = base / "devkit"
    classes = [str(c) for c in np.atleast_1d(_loadmat(devkit / "cars_meta.mat")["class_names"])]
    splits = {}
    for s, annos, images in (
        ("train", devkit / "cars_train_annos.mat", base / "cars_train"),
        ("test", base / "cars_test_annos_withlabels.mat", base / "cars_test"),
    ):
        _need(images)
        records = np.atleast_1d(_loadmat(annos)["annotations"])
        try:
            items = [images / str(r["fname"]) for r in records]
            labels = [int(r["class"]) - 1 for r in records]
        except (ValueError, IndexError, TypeError) as e:
            raise DataError(
                f"{annos}: expected an 'annotations' struct with fname and class fields ({e})"
            ) from None
        splits[s] = _path_split(s, items, labels, ctx.index_dir)
    return _Loaded(classes, splits)


def _fgvc_aircraft(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = _lines(data / "variants.txt")
    index = {c: i for i, c in enumerate(classes)}
    images = _need(data / "images")
    splits = {}
    for s in ("train", "val", "test"):
        listing = data / f"images_variant_{s}.txt"
        items, labels = [], []
        for line in _lines(listing):
            image_id, _, variant = line.partition(" ")
            if variant not in index:
                raise DataError(f"{listing}: variant {variant!r} is not in variants.txt")
            items.append(images / f"{image_id}.jpg")
            labels.append(index[variant])
        splits[s] = _path_split(s, items, labels, ctx.index_dir)
    return _Loaded(classes, splits)


def _dtd(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    base = root / "dtd" / "dtd"
    images = _need(base / "images")
    listed = {
        s: [line.split("/", 1) for line in _lines(base / "labels" / f"{s}1.txt")]
        for s in ("train", "val", "test")
    }
    classes = sorted({cls for rows in listed.values() for cls, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits = {
        s: _path_split(
            s, [images / cls / name for cls, name in rows], [index[cls] for cls, _ in rows], ctx.index_dir
        )
        for s, rows in listed.items()
    }
    return _Loaded(classes, splits)


_IDX_TYPES = {0x08: np.uint8}


def _idx(raw: Path, stem: str) -> tuple[np.ndarray | None, tuple[int, ...], int, Path]:
    """(in-memory array or None when memory-mappable, shape, data offset, file) of an idx file."""
    plain, gz = raw / stem, raw / f"{stem}.gz"
    path = plain if plain.is_file() else gz if gz.is_file() else None
    if path is None:
        raise _Absent(raw / f"{stem}[.gz]")
    if path is gz:
        with gzip.open(gz, "rb") as f:
            data = f.read()
        header = data[:4]
    else:
        with open(path, "rb") as f:
            header = f.read(4)
        data = None
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an unsigned-byte idx file (magic {header.hex()})")
    nd = header[3]
    if data is None:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * nd)
        size = os.path.getsize(path)
    else:
        head, size = data[: 4 + 4 * nd], len(data)
    shape = tuple(int(x) for x in np.frombuffer(head[4:], dtype=">u4"))
    offset = 4 + 4 * nd
    if len(shape) != nd or size - offset != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {size - offset} bytes")
    array = None if data is None else np.frombuffer(data, np.uint8, offset=offset).reshape(shape)
    return array, shape, offset, path


def _mnist(root: Path) -> _Loaded:
    raw = root / "MNIST" / "raw"
    splits = {}
    for s, prefix in (("train", "train"), ("test", "t10k")):
        array, shape, offset, img_path = _idx(raw, f"{prefix}-images-idx3-ubyte")
        lab, lshape, loff, lab_path = _idx(raw, f"{prefix}-labels-idx1-ubyte")
        if len(shape) != 3 or len(lshape) != 1:
            raise DataError(f"{img_path}, {lab_path}: expected [N, H, W] images and [N] labels")
        labels = lab if lab is not None else np.fromfile(lab_path, np.uint8, offset=loff)
        reader = (
            ArrayImages(array)
            if array is not None
            else ArrayImages(path=str(img_path), offset=offset, shape=shape)
        )
        splits[s] = _array_split(s, reader, shape[0], labels, [img_path, lab_path])
    return _Loaded(_names("mnist"), splits)


def _flowers(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    base = root / "flowers-102"
    images = _need(base / "jpg")
    labels = np.atleast_1d(_loadmat(base / "imagelabels.mat")["labels"]).astype(np.int64) - 1
    setid = _loadmat(base / "setid.mat")
    splits = {}
    for s, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        if key not in setid:
            raise DataError(f"{base / 'setid.mat'}: no {key!r} array (expected trnid, valid, tstid)")
        ids = np.atleast_1d(setid[key]).astype(np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > len(labels)):
            raise DataError(
                f"{base / 'setid.mat'}: {key} holds image ids outside 1..{len(labels)}"
                " (the length of imagelabels.mat)"
            )
        splits[s] = _path_split(
            s, [images / f"image_{i:05d}.jpg" for i in ids], labels[ids - 1], ctx.index_dir
        )
    return _Loaded(_names("flowers"), splits)


_STL_IMAGE = 3 * 96 * 96


def _stl10(root: Path) -> _Loaded:
    base = root / "stl10_binary"
    classes = _lines(base / "class_names.txt")
    splits = {}
    for s in ("train", "test"):
        x, y = _need(base / f"{s}_X.bin"), _need(base / f"{s}_y.bin")
        n, rest = divmod(os.path.getsize(x), _STL_IMAGE)
        if rest:
            raise DataError(f"{x}: size is not a multiple of 3*96*96 bytes")
        labels = np.fromfile(y, dtype=np.uint8).astype(np.int64) - 1
        # Each image is stored channel-major and column-major: [C, W, H] -> (H, W, C).
        reader = ArrayImages(path=str(x), shape=(n, 3, 96, 96), axes=(2, 1, 0))
        splits[s] = _array_split(s, reader, n, labels, [x, y])
    return _Loaded(classes, splits)


def _gtsrb(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    base = root / "gtsrb"
    train_dir = _need(base / "GTSRB" / "Training")
    test_dir = _need(base / "GTSRB" / "Final_Test" / "Images")
    csv_path = _need(base / "GT-final_test.csv")
    classes = _names("gtsrb")

    def label_of(folder: str) -> int:
        if not folder.isdigit() or int(folder) >= len(classes):
            raise DataError(f"{train_dir}: class folder {folder!r} is not 00000..{len(classes) - 1:05d}")
        return int(folder)

    train = folder_split("train", train_dir, classes, label_of, extensions=(".ppm",), index_dir=ctx.index_dir)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
    try:
        items = [test_dir / r["Filename"] for r in rows]
        labels = [int(r["ClassId"]) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{csv_path}: expected ';'-separated columns Filename and ClassId ({e})") from None
    return _Loaded(classes, {"train": train, "test": _path_split("test", items, labels, ctx.index_dir)})


def _split_folders(
    base: Path,
    folders: dict[str, str],
    fixed: Sequence[str] | None = None,
    extensions: Sequence[str] | None = None,
    ctx: _Ctx = _Ctx(),
) -> _Loaded:
    """Splits ``base/<folder>/<class>/*``; classes from the test folder unless ``fixed``."""
    dirs = {s: _need(base / f) for s, f in folders.items()}
    classes = list(fixed) if fixed is not None else class_folders(dirs["test"])
    for d in dirs.values():
        found = class_folders(d)
        if fixed is None:
            check_same_classes(dirs["test"], classes, d, found)
        elif not set(found) <= set(classes):
            raise DataError(
                f"{d}: unexpected class folders {sorted(set(found) - set(classes))}; expected {list(classes)}"
            )
    kw: dict[str, Any] = {"extensions": tuple(extensions)} if extensions else {}
    splits = {s: folder_split(s, d, classes, index_dir=ctx.index_dir, **kw) for s, d in dirs.items()}
    return _Loaded(classes, splits)


def _country211(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    return _split_folders(root / "country211", {"train": "train", "val": "valid", "test": "test"}, ctx=ctx)


def _renderedsst2(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    return _split_folders(
        root / "rendered-sst2",
        {"train": "train", "val": "valid", "test": "test"},
        fixed=("negative", "positive"),
        extensions=(".png",),
        ctx=ctx,
    )


IMAGENETV2_FOLDERS = (
    "imagenetv2-matched-frequency-format-val",  # the tarball's folder
    "ImageNetV2-matched-frequency",
)  # CLIP_benchmark's / imagenetv2_pytorch's


def _imagenetv2(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    folder = next((root / n for n in IMAGENETV2_FOLDERS if (root / n).is_dir()), root / IMAGENETV2_FOLDERS[0])
    if not folder.is_dir() and root.is_dir() and any(n.isdigit() for n in class_folders(root)):
        folder = root  # the class folders directly under root
    classes = [str(i) for i in range(1000)]

    def label_of(name: str) -> int:
        if not name.isdigit() or int(name) >= 1000:
            raise DataError(f"{folder}: class folder {name!r} is not a number 0..999")
        return int(name)

    return _Loaded(
        classes, {"test": folder_split("test", _need(folder), classes, label_of, index_dir=ctx.index_dir)}
    )


def _imagenet1k(root: Path, ctx: _Ctx = _Ctx()) -> _Loaded:
    folders = {"test": "val"}
    if (root / "train").is_dir():
        folders["train"] = "train"
    return _split_folders(root, folders, ctx=ctx)


# ------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Format:
    name: str
    origin: str  # whose layout is read, for messages
    layout: str  # what must be under root
    load: Callable[..., _Loaded]  # load(root[, ctx=_Ctx(...)])
    torchvision: str | None = None  # class that can download it (download = true)
    download: tuple[dict, ...] = field(default_factory=tuple)


_CIFAR10 = functools.partial(
    _cifar,
    "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "batches.meta",
    "label_names",
    "labels",
)
_CIFAR100 = functools.partial(
    _cifar,
    "cifar-100-python",
    {"train": ("train",), "test": ("test",)},
    "meta",
    "fine_label_names",
    "fine_labels",
)

FORMATS: tuple[_Format, ...] = (
    _Format(
        "food101",
        "torchvision Food101",
        "root/food-101/meta/{train,test}.json and root/food-101/images/<class>/<id>.jpg",
        _food101,
        "Food101",
        ({"split": "train"}, {"split": "test"}),
    ),
    _Format(
        "cifar10",
        "torchvision CIFAR10",
        "root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
        _CIFAR10,
        "CIFAR10",
        ({"train": True},),
    ),
    _Format(
        "cifar100",
        "torchvision CIFAR100",
        "root/cifar-100-python/{train,test,meta}",
        _CIFAR100,
        "CIFAR100",
        ({"train": True},),
    ),
    _Format(
        "sun397",
        "torchvision SUN397",
        "root/SUN397/ClassName.txt and root/SUN397/<letter>/<class>/sun_*.jpg (optionally "
        "Training_01.txt + Testing_01.txt in root/SUN397/)",
        _sun397,
        "SUN397",
        ({},),
    ),
    _Format(
        "cars",
        "torchvision StanfordCars",
        "root/stanford_cars/devkit/{cars_meta.mat,cars_train_annos.mat}, "
        "root/stanford_cars/cars_test_annos_withlabels.mat, root/stanford_cars/cars_{train,test}/",
        _cars,
    ),
    _Format(
        "fgvc_aircraft",
        "torchvision FGVCAircraft",
        "root/fgvc-aircraft-2013b/data/{variants.txt,images_variant_{train,val,test}.txt,images/}",
        _fgvc_aircraft,
        "FGVCAircraft",
        ({},),
    ),
    _Format(
        "dtd",
        "torchvision DTD",
        "root/dtd/dtd/labels/{train1,val1,test1}.txt and root/dtd/dtd/images/<class>/",
        _dtd,
        "DTD",
        ({},),
    ),
    _Format(
        "mnist",
        "torchvision MNIST",
        "root/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz] and "
        "root/MNIST/raw/{train,t10k}-labels-idx1-ubyte[.gz]",
        _mnist,
        "MNIST",
        ({"train": True}, {"train": False}),
    ),
    _Format(
        "flowers",
        "torchvision Flowers102",
        "root/flowers-102/jpg/image_NNNNN.jpg, root/flowers-102/{imagelabels.mat,setid.mat}",
        _flowers,
        "Flowers102",
        ({},),
    ),
    _Format(
        "stl10",
        "torchvision STL10",
        "root/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,class_names.txt}",
        _stl10,
        "STL10",
        ({},),
    ),
    _Format(
        "gtsrb",
        "torchvision GTSRB",
        "root/gtsrb/GTSRB/Training/<000NN>/*.ppm, root/gtsrb/GTSRB/Final_Test/Images/*.ppm, "
        "root/gtsrb/GT-final_test.csv",
        _gtsrb,
        "GTSRB",
        ({"split": "train"}, {"split": "test"}),
    ),
    _Format(
        "country211",
        "torchvision Country211",
        "root/country211/{train,valid,test}/<ISO code>/*.jpg",
        _country211,
        "Country211",
        ({},),
    ),
    _Format(
        "renderedsst2",
        "torchvision RenderedSST2",
        "root/rendered-sst2/{train,valid,test}/{negative,positive}/*.png",
        _renderedsst2,
        "RenderedSST2",
        ({},),
    ),
    _Format(
        "imagenetv2",
        "imagenetv2_pytorch matched-frequency",
        "root/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg, or "
        "root/ImageNetV2-matched-frequency/<0..999>/*.jpeg (CLIP_benchmark's and "
        "imagenetv2_pytorch's name), or the numbered class folders directly in root",
        _imagenetv2,
    ),
    _Format(
        "imagenet1k",
        "torchvision ImageNet (extracted)",
        "root/val/<wnid>/*.JPEG, optionally root/train/<wnid>/*.JPEG; classes sorted by wnid",
        _imagenet1k,
    ),
)


def _download(fmt: _Format, spec) -> None:
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, str(fmt.torchvision))
        for kw in fmt.download:
            cls(root=spec.root, download=True, **kw)
    except Exception as e:
        raise DataMissing(
            f"[datasets.{spec.id}] download = true: torchvision {fmt.torchvision} "
            f"could not fetch it into {spec.root} ({type(e).__name__}: {e}); "
            f"expected {fmt.layout}"
        ) from None


def _open(fmt: _Format, spec, index_dir: str | os.PathLike | None = None) -> Dataset:
    root = Path(spec.root)
    where = f"[datasets.{spec.id}] root = {root}"
    kw: dict[str, Any] = {}
    if "ctx" in inspect.signature(fmt.load).parameters:
        kw["ctx"] = _Ctx(dict(spec.options or {}), index_dir)
    try:
        try:
            loaded = fmt.load(root, **kw)
        except _Absent:
            if not (spec.download and fmt.torchvision):
                raise
            _download(fmt, spec)
            loaded = fmt.load(root, **kw)
    except _Absent as e:
        raise DataMissing(
            f"{where}: {e.path} not found; expected {fmt.layout} ({fmt.origin} layout)"
        ) from None
    except UnsafePickleError:
        raise
    except DataError as e:
        raise DataError(f"{where} ({fmt.name}): {e}") from None
    n = len(loaded.classes)
    for split in loaded.splits.values():
        if len(split) == 0:
            raise DataMissing(
                f"{where}: split {split.name!r} has no images; expected {fmt.layout} ({fmt.origin} layout)"
            )
        labels = np.asarray(split.labels)
        bad = (labels < 0) | (labels >= n)
        if bad.any():
            raise DataError(
                f"{where} ({fmt.name}): split {split.name!r} has label "
                f"{int(labels[bad][0])} outside 0..{n - 1} ({n} classes)"
            )
    meta = {"format": fmt.name, "layout": fmt.layout, **loaded.meta}
    notes = [n for sp in loaded.splits.values() for n in sp.notes]
    if notes:
        meta["notes"] = notes
    return Dataset(spec.id, loaded.splits, classnames=list(loaded.classes), meta=meta)


def _opener(fmt: _Format) -> Callable[..., Dataset]:
    def open_format(spec, index_dir: str | os.PathLike | None = None) -> Dataset:
        return _open(fmt, spec, index_dir)

    open_format.__name__ = f"open_{fmt.name}"
    return open_format


for _fmt in FORMATS:
    register_format(_fmt.name, types=("classification",))(_opener(_fmt))
