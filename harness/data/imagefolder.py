"""Format ``imagefolder``: ``root/{train,val,test}/<class>/<images>``.

Layout::

    root/
      train/<class>/*.jpg ...      the ``train`` split (optional: without it only zero-shot runs)
      val/<class>/*.jpg ...        optional ``val`` split
      test/<class>/*.jpg ...       the ``test`` split (required)

Classes are the folder names of ``test/`` (and of the other splits: they must agree), sorted;
labels are positions in that sorted list and the class names are the folder names (see
:mod:`harness.data.prompts` for how they become prompt names).  Images are found recursively
below each class folder, with extensions jpg, jpeg, png, bmp, ppm, pgm, tif, tiff and webp
(any case); hidden files and folders are ignored; links are followed but each folder is
walked once (a symlink loop is reported in ``Dataset.meta["notes"]`` and counted once) and only
regular files are images (:mod:`harness.data.files`).  Items are sorted by class then by path,
so the order (and the feature cache key) does not depend on the file system.  A class folder
without images is a :class:`~harness.errors.DataError`.  The listing is persisted
(:mod:`harness.data.index`): a warm open stats the directories only.

The scanning helpers here are shared by the folder-shaped formats of
:mod:`harness.data.classification` (Country211, Rendered SST2, ImageNet, ImageNet-V2, GTSRB).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, Split, dataset_root, register_format
from harness.data.files import IMAGE_EXTENSIONS, is_image, list_images
from harness.data.index import open_tree
from harness.errors import DataError, DataMissing

LAYOUT = (
    "root/test/<class>/<image> (required), root/train/<class>/<image> and root/val/<class>/<image> (optional)"
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUT",
    "check_same_classes",
    "class_folders",
    "folder_split",
    "is_image",
    "list_images",
    "open_imagefolder",
]


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder`` (one directory read)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def folder_split(
    name: str,
    folder: Path,
    classes: Sequence[str],
    label_of: Callable[[str], int] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    index_dir: str | os.PathLike | None = None,
    check_sizes: bool = False,
) -> Split:
    """A split made of ``folder/<class>/...`` for each class folder present under ``folder``.

    ``label_of(folder_name)`` gives the label (default: the position in ``classes``).  The
    listing comes from :func:`harness.data.index.open_tree` (persisted under ``index_dir``); the
    split's fingerprint is the listing's (relative paths, sizes, mtimes), so it costs no stat
    per image.  A class folder without images is a :class:`DataError` naming it.
    """
    index = {c: i for i, c in enumerate(classes)}
    label_of = label_of or index.__getitem__
    tree = open_tree(folder, extensions, index_dir, check_sizes)
    by_class: dict[str, list[str]] = {}
    for f in tree.files:
        cls, sep, _ = f.partition("/")
        if sep:
            by_class.setdefault(cls, []).append(f)
    items: list[str] = []
    labels: list[int] = []
    base = os.fspath(folder)
    prefix = base.rstrip(os.sep) + os.sep
    for cls in class_folders(folder):
        rels = by_class.get(cls)
        if not rels:
            skipped = [n for n in tree.notes if f"{os.sep}{cls}" in n]
            raise DataError(
                f"{os.path.join(base, cls)}: class folder holds no images (extensions "
                f"{', '.join(e.lstrip('.') for e in extensions)}); an empty class would shift "
                f"every label after it -- remove the folder or add its images"
                + (f" ({skipped[0]})" if skipped else "")
            )
        y = label_of(cls)
        items.extend(
            [prefix + r for r in rels] if os.sep == "/" else [os.path.join(base, *r.split("/")) for r in rels]
        )
        labels.extend([y] * len(rels))
    return Split(
        name,
        items,
        np.asarray(labels, dtype=np.int64),
        notes=list(tree.notes),
        fingerprint_parts=[f"folder-index-v1|{tree.fingerprint}"],
    )


def check_same_classes(
    reference: Path, ref_classes: Sequence[str], other: Path, other_classes: Sequence[str]
) -> None:
    """DataError naming both folders when two splits disagree on their class folders."""
    if list(ref_classes) == list(other_classes):
        return
    only_ref = sorted(set(ref_classes) - set(other_classes))
    only_other = sorted(set(other_classes) - set(ref_classes))
    raise DataError(
        f"the class folders of {reference} ({len(ref_classes)}) and {other} "
        f"({len(other_classes)}) differ: only in {reference.name}/: {only_ref[:5]}, "
        f"only in {other.name}/: {only_other[:5]}; every split needs the same class folders"
    )


@register_format("imagefolder", types=("classification",))
def open_imagefolder(spec, index_dir: str | os.PathLike | None = None, check_sizes: bool = False) -> Dataset:
    root, where = dataset_root(spec, LAYOUT)
    test = root / "test"
    if not test.is_dir():
        raise DataMissing(f"{where}: no test/ folder; expected {LAYOUT}")
    classes = class_folders(test)
    if not classes:
        raise DataMissing(f"{where}: test/ has no class folders; expected {LAYOUT}")
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        folder = root / name
        if not folder.is_dir():
            continue
        check_same_classes(test, classes, folder, class_folders(folder))
        split = folder_split(name, folder, classes, index_dir=index_dir, check_sizes=check_sizes)
        if len(split) == 0:
            raise DataMissing(
                f"{where}: no images under {folder} (extensions "
                f"{', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); expected {LAYOUT}"
            )
        splits[name] = split
    notes = [n for sp in splits.values() for n in sp.notes]
    meta = {"format": "imagefolder", **({"notes": notes} if notes else {})}
    return Dataset(spec.id, splits, classnames=list(classes), meta=meta)
