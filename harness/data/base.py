"""What every dataset format returns: splits of images with labels and per-sample metadata.

A format is one small module with a function ``open(spec) -> Dataset`` registered under its
name with :func:`register_format`.  Formats never run a model; they only say where images are
and how to decode one.  ``open`` raises :class:`harness.errors.DataMissing` when the files are
absent (the case then skips with that reason) and :class:`harness.errors.DataError` when they
are present but wrong.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.data.files import decode_image
from harness.data.registry import formats, register_format
from harness.errors import HarnessError

__all__ = [
    "Dataset",
    "Split",
    "dataset_root",
    "decode_image",
    "file_fingerprint",
    "formats",
    "item_fingerprint",
    "register_format",
]


@dataclass
class Split:
    """One split of a dataset.

    ``items[i]`` is whatever ``reader`` needs to produce image ``i`` (default: a path or encoded
    bytes, decoded by :func:`decode_image`).  ``labels`` are integer class labels (classification,
    attack: 1 = bona fide, 0 = attack) or ``None``.  ``meta`` carries format-specific per-sample
    or per-split arrays (``issame`` for verification pairs, ``attack_type``, ``video_id``,
    template/media ids, landmarks, ...).  ``fingerprint_parts`` must change whenever the decoded
    images could change; by default it is built from the items (paths with size and mtime).
    """

    name: str
    items: Sequence[Any]
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reader: Callable[[Any], Image.Image] | None = None
    fingerprint_parts: Sequence[str] | None = None
    notes: list[str] = field(default_factory=list)  # one-line reports of the listing (loops, ...)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Image.Image:
        item = self.items[i]
        return (self.reader or decode_image)(item)

    def fingerprint(self) -> str:
        cached = self.__dict__.get("_fingerprint")
        if cached is not None:
            return cached
        h = hashlib.sha256()
        h.update(self.name.encode())
        if self.fingerprint_parts is not None:
            for p in self.fingerprint_parts:
                h.update(str(p).encode())
                h.update(b"\0")
        else:
            for item in self.items:
                h.update(item_fingerprint(item).encode())
                h.update(b"\0")
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        self.__dict__["_fingerprint"] = h.hexdigest()
        return self.__dict__["_fingerprint"]


def item_fingerprint(item: Any) -> str:
    """Path + size + mtime for files; a content hash for in-memory bytes."""
    if isinstance(item, (bytes, bytearray, memoryview, np.ndarray)):
        data = item.tobytes() if isinstance(item, np.ndarray) else bytes(item)
        return hashlib.sha1(data).hexdigest()
    path = os.fspath(item)
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def file_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of one file on disk (path, size, mtime): for single-file formats."""
    return item_fingerprint(os.fspath(path))


@dataclass
class Dataset:
    """An opened dataset: its splits and, for classification, its class names."""

    id: str
    splits: dict[str, Split]
    classnames: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise HarnessError(f"dataset {self.id!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


def dataset_root(spec, layout: str, kind: str = "folder") -> tuple[Path, str]:
    """``(root, where)`` of a dataset whose root must be an existing folder (or file).

    ``where`` names the suite file, table and key for messages; an absent root raises
    :class:`~harness.errors.DataMissing` with the expected layout.
    """
    from harness.errors import DataMissing

    root = Path(spec.root)
    where = f"{spec.source}: [datasets.{spec.id}] root = {root}"
    exists = root.is_file() if kind == "file" else root.is_dir()
    if not exists:
        raise DataMissing(f"{where}: {kind} not found; expected {layout}")
    return root, where
