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
(any case); hidden files and folders are ignored.  Items are sorted by class then by path, so
the order (and the feature cache key) does not depend on the file system.

The scanning helpers here are shared by the folder-shaped formats of
:mod:`harness.data.classification` (Country211, Rendered SST2, ImageNet, ImageNet-V2, GTSRB).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harness.data.base import Dataset, Split, dataset_root, register_format
from harness.errors import DataError, DataMissing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

LAYOUT = "root/test/<class>/<image> (required), root/train/<class>/<image> and root/val/<class>/<image> (optional)"


def is_image(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Every image below ``folder`` (recursively, following links), sorted by path."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(os.path.join(dirpath, f) for f in filenames if is_image(f, extensions))
    out.sort()
    return out


def folder_split(name: str, folder: Path, classes: Sequence[str],
                 label_of: Callable[[str], int] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Split:
    """A split made of ``folder/<class>/...`` for each class folder present under ``folder``.

    ``label_of(folder_name)`` gives the label (default: the position in ``classes``).
    """
    index = {c: i for i, c in enumerate(classes)}
    label_of = label_of or index.__getitem__
    items: list[str] = []
    labels: list[int] = []
    for cls in class_folders(folder):
        paths = list_images(folder / cls, extensions)
        items.extend(paths)
        labels.extend([label_of(cls)] * len(paths))
    return Split(name, items, np.asarray(labels, dtype=np.int64))


def check_same_classes(reference: Path, ref_classes: Sequence[str], other: Path,
                       other_classes: Sequence[str]) -> None:
    """DataError naming both folders when two splits disagree on their class folders."""
    if list(ref_classes) == list(other_classes):
        return
    only_ref = sorted(set(ref_classes) - set(other_classes))
    only_other = sorted(set(other_classes) - set(ref_classes))
    raise DataError(
        f"the class folders of {reference} ({len(ref_classes)}) and {other} "
        f"({len(other_classes)}) differ: only in {reference.name}/: {only_ref[:5]}, "
        f"only in {other.name}/: {only_other[:5]}; every split needs the same class folders")


@register_format("imagefolder", types=("classification",))
def open_imagefolder(spec) -> Dataset:
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
        split = folder_split(name, folder, classes)
        if len(split) == 0:
            raise DataMissing(f"{where}: no images under {folder} (extensions "
                              f"{', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); expected {LAYOUT}")
        splits[name] = split
    return Dataset(spec.id, splits, classnames=list(classes), meta={"format": "imagefolder"})
