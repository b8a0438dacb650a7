"""MAD / PAD datasets: a CSV list file (``list``) or one folder per morphing method (``mad-folders``).

Both formats serve dataset types ``mad`` and ``pad``.  Every split has ``labels`` (numpy int,
1 = bona fide, 0 = attack) and ``meta["attack_type"]`` (numpy str array, ``""`` on bona fide
rows); the ``list`` format adds ``meta["video_id"]`` / ``meta["subject_id"]`` when the file has
those columns (``""`` where a row leaves them empty).  Split names: ``test`` (always), ``train``
(the probe's training data, optional), ``dev`` (for the ``dev-eer`` threshold, optional).

``format = "list"``
    ``root`` is either one CSV file (it becomes the ``test`` split) or a folder holding
    ``test.csv`` and optionally ``train.csv`` and ``dev.csv``.  Each CSV starts with the header
    ``path,label,attack_type`` optionally followed by ``video_id`` and/or ``subject_id``
    (columns are matched by name; no other column is accepted)::

        path,label,attack_type,video_id,subject_id
        live/0001.png,bonafide,,v1,s1
        print/0001.png,attack,print,v2,s1

    ``path`` is relative to the CSV's folder (absolute paths are kept); ``label`` is
    ``bonafide`` or ``attack`` (case-insensitive); ``attack_type`` is required on attack rows
    and must be empty on bona fide rows.  Every listed image must exist.

``format = "mad-folders"``
    ``root/bonafide/`` holds the bona fide images and every other folder ``root/<method>/``
    the morphs of one method (attack type = the folder name); images are found recursively
    (``.png .jpg .jpeg .bmp .tif .tiff .webp .ppm .pgm``, hidden files skipped), sorted.
    The names ``train`` and ``dev`` are reserved: ``root/train/`` and ``root/dev/``, when
    present, hold the ``train`` and ``dev`` splits in the same layout
    (``root/train/bonafide/``, ``root/train/<method>/``)::

        root/bonafide/*.png   root/FaceMorpher/*.png   root/MIPGAN-I/*.png   ...
        root/train/bonafide/*.png   root/train/FaceMorpher/*.png   ...   (optional)

Errors: a missing ``root`` (or a folder without ``test.csv``) raises
:class:`~harness.errors.DataMissing` naming the path and the expected layout; malformed
content raises :class:`~harness.errors.DataError`, one line naming the file (and row).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, Split, register_format
from harness.errors import DataError, DataMissing

REQUIRED_COLUMNS = ("path", "label", "attack_type")
OPTIONAL_COLUMNS = ("video_id", "subject_id")
LABELS = {"bonafide": 1, "attack": 0}
SPLITS = ("test", "train", "dev")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm"})
BONA_FIDE_DIR = "bonafide"
RESERVED_DIRS = ("train", "dev")

_LIST_LAYOUT = ("expected a CSV list file (the test split) or a folder with test.csv "
                "[train.csv] [dev.csv]; header path,label,attack_type[,video_id][,subject_id]")
_FOLDERS_LAYOUT = ("expected root/bonafide/* and root/<method>/* images, optionally "
                   "root/train/ and root/dev/ in the same layout")


def _check_split(name: str, where: str, labels: np.ndarray) -> None:
    if not np.any(labels == 1):
        raise DataError(f"{where}: split {name!r} has no bona fide samples; it needs both "
                        "bona fide and attack samples")
    if not np.any(labels == 0):
        raise DataError(f"{where}: split {name!r} has no attack samples; it needs both "
                        "bona fide and attack samples")


# ------------------------------------------------------------------------------------ list

def read_list(csv_path: str | os.PathLike, split: str = "test") -> Split:
    """Read one list CSV into a :class:`Split` (see the module docstring for the format)."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    try:
        fh = open(csv_path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataMissing(f"{csv_path}: list file not found; {_LIST_LAYOUT}") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path}: empty file; expected the header "
                            "path,label,attack_type[,video_id][,subject_id]")
        header = [h.strip() for h in header]
        for h in header:
            if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
                raise DataError(f"{csv_path}: line 1: unknown column {h!r}; expected "
                                "path,label,attack_type[,video_id][,subject_id]")
        if len(set(header)) != len(header):
            raise DataError(f"{csv_path}: line 1: duplicate column in header {','.join(header)}")
        for h in REQUIRED_COLUMNS:
            if h not in header:
                raise DataError(f"{csv_path}: line 1: missing column {h!r}; expected "
                                "path,label,attack_type[,video_id][,subject_id]")
        col = {h: i for i, h in enumerate(header)}
        extra = [h for h in OPTIONAL_COLUMNS if h in col]
        paths: list[str] = []
        labels: list[int] = []
        types: list[str] = []
        extras: dict[str, list[str]] = {h: [] for h in extra}
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{csv_path}: line {line}"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
            rel = row[col["path"]].strip()
            if not rel:
                raise DataError(f"{where}: empty path")
            lab = row[col["label"]].strip().lower()
            if lab not in LABELS:
                raise DataError(f"{where}: unknown label {row[col['label']]!r}; expected "
                                "'bonafide' or 'attack'")
            atype = row[col["attack_type"]].strip()
            if lab == "bonafide" and atype:
                raise DataError(f"{where}: bona fide row has attack_type {atype!r}; leave it empty")
            if lab == "attack" and not atype:
                raise DataError(f"{where}: attack row has no attack_type; name the attack "
                                "species or morphing method")
            p = Path(rel)
            full = p if p.is_absolute() else base / p
            if not full.is_file():
                raise DataError(f"{where}: image {str(full)!r} does not exist")
            paths.append(str(full))
            labels.append(LABELS[lab])
            types.append(atype)
            for h in extra:
                extras[h].append(row[col[h]].strip())
    y = np.asarray(labels, dtype=np.int64)
    _check_split(split, str(csv_path), y)
    meta = {"attack_type": np.asarray(types, dtype=str)}
    for h in extra:
        meta[h] = np.asarray(extras[h], dtype=str)
    return Split(name=split, items=paths, labels=y, meta=meta)


def _attack_meta(splits: dict[str, Split], fmt: str, root: str) -> dict:
    types = sorted({str(t) for sp in splits.values() for t in sp.meta["attack_type"] if t})
    return {"format": fmt, "root": root, "attack_types": types}


@register_format("list", types=("mad", "pad"))
def open_list(spec) -> Dataset:
    """``format = "list"``: a CSV file (test split) or a folder of ``test/train/dev.csv``."""
    root = Path(spec.root)
    if root.is_file():
        splits = {"test": read_list(root, "test")}
    elif root.is_dir():
        if not (root / "test.csv").is_file():
            raise DataMissing(f"{root}: no test.csv in the dataset folder "
                              f"([datasets.{spec.id}] root in {spec.source}); {_LIST_LAYOUT}")
        splits = {name: read_list(root / f"{name}.csv", name) for name in SPLITS
                  if (root / f"{name}.csv").is_file()}
    else:
        raise DataMissing(f"{root}: not found ([datasets.{spec.id}] root in {spec.source}); "
                          f"{_LIST_LAYOUT}")
    return Dataset(id=spec.id, splits=splits, meta=_attack_meta(splits, "list", str(root)))


# ----------------------------------------------------------------------------- mad-folders

def _images(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(os.path.join(dirpath, f))
    return sorted(out)


def read_method_folders(folder: str | os.PathLike, split: str = "test",
                        reserved: tuple[str, ...] = ()) -> Split:
    """Read ``folder/bonafide/`` + ``folder/<method>/`` into a :class:`Split`."""
    folder = Path(folder)
    bona = folder / BONA_FIDE_DIR
    if not bona.is_dir():
        raise DataError(f"{folder}: no {BONA_FIDE_DIR}/ folder for split {split!r}; "
                        f"{_FOLDERS_LAYOUT}")
    methods = sorted(d.name for d in folder.iterdir()
                     if d.is_dir() and d.name != BONA_FIDE_DIR and d.name not in reserved
                     and not d.name.startswith("."))
    if not methods:
        raise DataError(f"{folder}: split {split!r} has no attack samples: no <method>/ folder "
                        f"beside {BONA_FIDE_DIR}/; {_FOLDERS_LAYOUT}")
    paths = _images(bona)
    if not paths:
        raise DataError(f"{bona}: split {split!r} has no bona fide samples (no images found)")
    types = [""] * len(paths)
    for m in methods:
        imgs = _images(folder / m)
        if not imgs:
            raise DataError(f"{folder / m}: morphing-method folder holds no images")
        paths += imgs
        types += [m] * len(imgs)
    y = np.zeros(len(paths), dtype=np.int64)
    y[: types.count("")] = 1
    return Split(name=split, items=paths, labels=y,
                 meta={"attack_type": np.asarray(types, dtype=str)})


@register_format("mad-folders", types=("mad", "pad"))
def open_mad_folders(spec) -> Dataset:
    """``format = "mad-folders"``: ``root/bonafide/``, ``root/<method>/`` [+ ``root/train/``, ``root/dev/``]."""
    root = Path(spec.root)
    if not root.is_dir():
        raise DataMissing(f"{root}: not found ([datasets.{spec.id}] root in {spec.source}); "
                          f"{_FOLDERS_LAYOUT}")
    splits = {"test": read_method_folders(root, "test", reserved=RESERVED_DIRS)}
    for name in RESERVED_DIRS:
        if (root / name).is_dir():
            splits[name] = read_method_folders(root / name, name)
    return Dataset(id=spec.id, splits=splits, meta=_attack_meta(splits, "mad-folders", str(root)))
