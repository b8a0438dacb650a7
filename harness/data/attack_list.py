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

    ``path`` is relative to the CSV's folder and must resolve (links followed) inside it: an
    absolute path, or one that leaves the folder (``../``, a link pointing out), is refused
    with a one-line error naming it unless the dataset sets ``allow_outside_root = true``.
    ``label`` is ``bonafide`` or ``attack`` (case-insensitive); ``attack_type`` is required on
    attack rows and must be empty on bona fide rows.  Every listed image must exist and be a
    regular file (a FIFO or ``/dev/zero`` is reported as "not a regular file").  The images are
    checked through the persisted list index (:func:`harness.data.index.open_listed`): a warm
    open of an unchanged list stats the folders holding the images, not each image.

``format = "mad-folders"``
    ``root/bonafide/`` holds the bona fide images and every other folder ``root/<method>/``
    the morphs of one method (attack type = the folder name); images are found recursively
    (the one listing policy of :mod:`harness.data.files`: its extensions, hidden files
    skipped, each folder walked once, regular files only), sorted; the listing is persisted
    (:func:`harness.data.index.open_tree`) and the split's fingerprint is made from it (path,
    size, mtime of each image) without a stat per image.
    The names ``train`` and ``dev`` are reserved: ``root/train/`` and ``root/dev/``, when
    present, hold the ``train`` and ``dev`` splits in the same layout
    (``root/train/bonafide/``, ``root/train/<method>/``)::

        root/bonafide/*.png   root/FaceMorpher/*.png   root/MIPGAN-I/*.png   ...
        root/train/bonafide/*.png   root/train/FaceMorpher/*.png   ...   (optional)

``video_id_pattern = "REGEX"`` (both formats): a regular expression with exactly one group,
searched in each image's path relative to the root (the CSV's folder for ``list``, ``root``
for ``mad-folders``; ``/``-separated); the group is the image's ``meta["video_id"]`` (frames of
one video are averaged by the PAD protocol).  A path it does not match is a one-line
:class:`~harness.errors.DataError` naming the path.  With ``list`` it replaces a ``video_id``
column (giving both is an error).

Errors: a missing ``root`` (or a folder without ``test.csv``) raises
:class:`~harness.errors.DataMissing` naming the path and the expected layout; malformed
content raises :class:`~harness.errors.DataError`, one line naming the file (and row).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.base import Dataset, Split, register_format
from harness.data.files import IMAGE_EXTENSIONS, regular_file_problem
from harness.data.index import list_fingerprint, open_listed, open_tree
from harness.errors import DataError, DataMissing

REQUIRED_COLUMNS = ("path", "label", "attack_type")
OPTIONAL_COLUMNS = ("video_id", "subject_id")
LABELS = {"bonafide": 1, "attack": 0}
SPLITS = ("test", "train", "dev")
BONA_FIDE_DIR = "bonafide"
RESERVED_DIRS = ("train", "dev")

_LIST_LAYOUT = (
    "expected a CSV list file (the test split) or a folder with test.csv "
    "[train.csv] [dev.csv]; header path,label,attack_type[,video_id][,subject_id]"
)
_FOLDERS_LAYOUT = (
    "expected root/bonafide/* and root/<method>/* images, optionally "
    "root/train/ and root/dev/ in the same layout"
)


def _check_split(name: str, where: str, labels: np.ndarray) -> None:
    if not np.any(labels == 1):
        raise DataError(
            f"{where}: split {name!r} has no bona fide samples; it needs both bona fide and attack samples"
        )
    if not np.any(labels == 0):
        raise DataError(
            f"{where}: split {name!r} has no attack samples; it needs both bona fide and attack samples"
        )


# ------------------------------------------------------------------------------------ list


def video_id_regex(pattern: str | None, where: str) -> re.Pattern[str] | None:
    """The compiled ``video_id_pattern`` (one group), or a one-line DataError naming ``where``."""
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DataError(
            f"{where}: video_id_pattern = {pattern!r} is not a regular expression ({e})"
        ) from None
    if rx.groups != 1:
        raise DataError(
            f"{where}: video_id_pattern = {pattern!r} has {rx.groups} groups; "
            "expected exactly one, the video id"
        )
    return rx


def video_ids(rx: re.Pattern[str], rel_paths: list[str], where: str) -> np.ndarray:
    """The group of ``rx`` searched in each relative path; a path it misses is a DataError."""
    out = []
    for rel in rel_paths:
        m = rx.search(rel)
        if m is None or m.group(1) is None:
            raise DataError(f"{where}: path {rel!r} does not match video_id_pattern {rx.pattern!r}")
        out.append(m.group(1))
    return np.asarray(out, dtype=str)


def _within(real: str, base_real: str) -> bool:
    """Whether the resolved path ``real`` is ``base_real`` or below it."""
    return real == base_real or real.startswith(base_real.rstrip(os.sep) + os.sep)


def _check_rows(
    rows: list[tuple[str, str, str, bool]],
    base: Path,
    base_real: str,
    allow_outside_root: bool,
    problem_of: Callable[[int], str | None],
    real_of: Callable[[int], str],
) -> None:
    """The first row (in file order) whose image is outside the list's folder or not usable.

    ``rows``: ``(where, path as written, full path, absolute)``; ``problem_of`` / ``real_of``
    answer for a row's position (from the list index, or checked afresh).
    """
    for k, (where, rel, full, absolute) in enumerate(rows):
        if not allow_outside_root and (absolute or not _within(real_of(k), base_real)):
            raise DataError(
                f"{where}: path {rel!r} resolves outside the list's folder "
                f"{base}; set allow_outside_root = true to allow it"
            )
        problem = problem_of(k)
        if problem is not None:
            raise DataError(f"{where}: image {full!r} {problem}")


def read_list(
    csv_path: str | os.PathLike,
    split: str = "test",
    *,
    allow_outside_root: bool = False,
    video_id_pattern: str | None = None,
    index_dir: str | os.PathLike | None = None,
) -> Split:
    """Read one list CSV into a :class:`Split` (see the module docstring for the format).

    The listed images are checked through the persisted list index
    (:func:`harness.data.index.open_listed`, under ``index_dir``); errors are reported for the
    first row that has one, in file order, as if each row were checked when read.
    """
    csv_path = Path(csv_path)
    base = csv_path.parent
    base_real = os.path.realpath(base)
    rx = video_id_regex(video_id_pattern, str(csv_path))
    problem = regular_file_problem(csv_path)
    if problem == "does not exist":
        raise DataMissing(f"{csv_path}: list file not found; {_LIST_LAYOUT}")
    if problem is not None:
        raise DataError(f"{csv_path}: list file {problem}; {_LIST_LAYOUT}")
    rows: list[tuple[str, str, str, bool]] = []  # (where, path as written, full path, absolute)
    pending: DataError | csv.Error | None = None  # the first malformed row, raised after the files
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{csv_path}: empty file; expected the header path,label,attack_type[,video_id][,subject_id]"
            )
        header = [h.strip() for h in header]
        for h in header:
            if h not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
                raise DataError(
                    f"{csv_path}: line 1: unknown column {h!r}; expected "
                    "path,label,attack_type[,video_id][,subject_id]"
                )
        if len(set(header)) != len(header):
            raise DataError(f"{csv_path}: line 1: duplicate column in header {','.join(header)}")
        for h in REQUIRED_COLUMNS:
            if h not in header:
                raise DataError(
                    f"{csv_path}: line 1: missing column {h!r}; expected "
                    "path,label,attack_type[,video_id][,subject_id]"
                )
        col = {h: i for i, h in enumerate(header)}
        extra = [h for h in OPTIONAL_COLUMNS if h in col]
        if rx is not None and "video_id" in col:
            raise DataError(
                f"{csv_path}: line 1: a video_id column and video_id_pattern are both given; keep one"
            )
        rels: list[str] = []
        labels: list[int] = []
        types: list[str] = []
        extras: dict[str, list[str]] = {h: [] for h in extra}
        try:
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
                    raise DataError(
                        f"{where}: unknown label {row[col['label']]!r}; expected 'bonafide' or 'attack'"
                    )
                atype = row[col["attack_type"]].strip()
                if lab == "bonafide" and atype:
                    raise DataError(f"{where}: bona fide row has attack_type {atype!r}; leave it empty")
                if lab == "attack" and not atype:
                    raise DataError(
                        f"{where}: attack row has no attack_type; name the attack species or morphing method"
                    )
                p = Path(rel)
                full = p if p.is_absolute() else base / p
                rows.append((where, rel, str(full), p.is_absolute()))
                rels.append(os.path.relpath(full, base).replace(os.sep, "/"))
                labels.append(LABELS[lab])
                types.append(atype)
                for h in extra:
                    extras[h].append(row[col[h]].strip())
        except (DataError, csv.Error) as e:
            pending = e
    paths = [full for _, _, full, _ in rows]
    if pending is not None:  # the rows before the malformed one first, checked one by one
        _check_rows(
            rows,
            base,
            base_real,
            allow_outside_root,
            lambda k: regular_file_problem(paths[k]),
            lambda k: os.path.realpath(paths[k]),
        )
        raise pending
    listed = open_listed(paths, index_dir)
    reals = [] if allow_outside_root else listed.realpaths()
    _check_rows(
        rows, base, base_real, allow_outside_root, lambda k: listed.problems.get(k), reals.__getitem__
    )
    y = np.asarray(labels, dtype=np.int64)
    _check_split(split, str(csv_path), y)
    meta = {"attack_type": np.asarray(types, dtype=str)}
    for h in extra:
        meta[h] = np.asarray(extras[h], dtype=str)
    if rx is not None:
        meta["video_id"] = video_ids(rx, rels, str(csv_path))
    return Split(
        name=split, items=paths, labels=y, meta=meta, fingerprint_parts=[f"listed-v1|{listed.fingerprint}"]
    )


def _attack_meta(splits: dict[str, Split], fmt: str, root: str) -> dict:
    types = sorted({str(t) for sp in splits.values() for t in sp.meta["attack_type"] if t})
    return {"format": fmt, "root": root, "attack_types": types}


@register_format("list", types=("mad", "pad"))
def open_list(spec, index_dir: str | os.PathLike | None = None) -> Dataset:
    """``format = "list"``: a CSV file (test split) or a folder of ``test/train/dev.csv``."""
    root = Path(spec.root)
    opts = spec.options or {}
    kw: dict[str, Any] = {
        "allow_outside_root": bool(opts.get("allow_outside_root", False)),
        "video_id_pattern": opts.get("video_id_pattern"),
        "index_dir": index_dir,
    }
    if root.is_file():
        splits = {"test": read_list(root, "test", **kw)}
    elif root.is_dir():
        if not (root / "test.csv").is_file():
            raise DataMissing(
                f"{root}: no test.csv in the dataset folder "
                f"([datasets.{spec.id}] root in {spec.source}); {_LIST_LAYOUT}"
            )
        splits = {
            name: read_list(root / f"{name}.csv", name, **kw)
            for name in SPLITS
            if (root / f"{name}.csv").is_file()
        }
    else:
        raise DataMissing(f"{root}: not found ([datasets.{spec.id}] root in {spec.source}); {_LIST_LAYOUT}")
    return Dataset(id=spec.id, splits=splits, meta=_attack_meta(splits, "list", str(root)))


# ----------------------------------------------------------------------------- mad-folders


def _listing(folder: Path, index_dir: str | os.PathLike | None) -> dict[str, list[tuple[str, int, int]]]:
    """``(path, size, mtime_ns)`` of the images below each sub-folder of ``folder`` (sorted by
    path), from the one lister's persisted listing (:func:`harness.data.index.open_tree`)."""
    tree = open_tree(folder, IMAGE_EXTENSIONS, index_dir)
    out: dict[str, list[tuple[str, int, int]]] = {}
    for f, size, mtime in zip(tree.files, tree.sizes, tree.mtimes):
        sub, sep, _ = f.partition("/")
        if sep:
            out.setdefault(sub, []).append((os.path.join(folder, *f.split("/")), size, mtime))
    return out


def read_method_folders(
    folder: str | os.PathLike,
    split: str = "test",
    reserved: tuple[str, ...] = (),
    *,
    root: str | os.PathLike | None = None,
    video_id_pattern: str | None = None,
    index_dir: str | os.PathLike | None = None,
) -> Split:
    """Read ``folder/bonafide/`` + ``folder/<method>/`` into a :class:`Split`.

    ``root``: what ``video_id_pattern`` paths are relative to (default ``folder``).
    """
    folder = Path(folder)
    rx = video_id_regex(video_id_pattern, str(folder))
    bona = folder / BONA_FIDE_DIR
    if not bona.is_dir():
        raise DataError(f"{folder}: no {BONA_FIDE_DIR}/ folder for split {split!r}; {_FOLDERS_LAYOUT}")
    methods = sorted(
        d.name
        for d in folder.iterdir()
        if d.is_dir() and d.name != BONA_FIDE_DIR and d.name not in reserved and not d.name.startswith(".")
    )
    if not methods:
        raise DataError(
            f"{folder}: split {split!r} has no attack samples: no <method>/ folder "
            f"beside {BONA_FIDE_DIR}/; {_FOLDERS_LAYOUT}"
        )
    listing = _listing(folder, index_dir)
    files = list(listing.get(BONA_FIDE_DIR, []))
    if not files:
        raise DataError(f"{bona}: split {split!r} has no bona fide samples (no images found)")
    types = [""] * len(files)
    for m in methods:
        imgs = listing.get(m, [])
        if not imgs:
            raise DataError(f"{folder / m}: morphing-method folder holds no images")
        files += imgs
        types += [m] * len(imgs)
    paths = [f for f, _, _ in files]
    y = np.zeros(len(paths), dtype=np.int64)
    y[: types.count("")] = 1
    meta = {"attack_type": np.asarray(types, dtype=str)}
    if rx is not None:
        base = os.fspath(root if root is not None else folder)
        meta["video_id"] = video_ids(
            rx, [os.path.relpath(p, base).replace(os.sep, "/") for p in paths], str(folder)
        )
    # path, size and mtime of every item, as recorded by the listing: no stat per image
    fp = list_fingerprint(paths, [s for _, s, _ in files], [m for _, _, m in files])
    return Split(name=split, items=paths, labels=y, meta=meta, fingerprint_parts=[f"listed-v1|{fp}"])


@register_format("mad-folders", types=("mad", "pad"))
def open_mad_folders(spec, index_dir: str | os.PathLike | None = None) -> Dataset:
    """``format = "mad-folders"``: ``root/bonafide/``, ``root/<method>/`` [+ ``root/train/``, ``root/dev/``]."""
    root = Path(spec.root)
    if not root.is_dir():
        raise DataMissing(
            f"{root}: not found ([datasets.{spec.id}] root in {spec.source}); {_FOLDERS_LAYOUT}"
        )
    kw: dict[str, Any] = {
        "root": root,
        "video_id_pattern": (spec.options or {}).get("video_id_pattern"),
        "index_dir": index_dir,
    }
    splits = {"test": read_method_folders(root, "test", reserved=RESERVED_DIRS, **kw)}
    for name in RESERVED_DIRS:
        if (root / name).is_dir():
            splits[name] = read_method_folders(root / name, name, **kw)
    return Dataset(id=spec.id, splits=splits, meta=_attack_meta(splits, "mad-folders", str(root)))
