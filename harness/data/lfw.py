"""Format ``lfw-pairs``: Labeled Faces in the Wild, a ``pairs.txt`` list and the image folder.

Layout::

    root/
      pairs.txt                       View 2: header "10<TAB>300", then per set 300 matched
                                      lines "name n1 n2" and 300 mismatched "name1 n1 name2 n2"
      lfw/<name>/<name>_<%04d>.jpg    the images (1-based numbers) ...
      <name>/<name>_<%04d>.jpg        ... or directly under root (used when root/lfw/ is absent)

The images live in ``root/lfw/`` when that folder exists (the layout of the official
``lfw.tgz`` unpacked beside ``pairs.txt``), otherwise directly in ``root/``.  Any aligned
variant (deep-funneled, 112x112 crops, ...) works when it keeps the ``name/name_%04d.jpg``
names.

``pairs.txt`` is read in file order; the header line (one or two integers) is optional and,
when it gives ``sets per_set``, the file must hold exactly ``2 * sets * per_set`` pair lines.
Pair ``i`` is items ``2i`` and ``2i+1``; a listed image that is missing is a
:class:`~harness.errors.DataError` naming it (a skipped pair would shift every later fold).

One split, ``test``: ``items`` are the ``2N`` image paths, ``labels`` is ``None`` and
``meta["issame"]`` the ``N`` booleans; the fingerprint covers ``pairs.txt`` and every image
(path, size, mtime).  The images are checked through the persisted list index
(:func:`harness.data.index.open_listed`): a warm open stats the image folders, not each image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, Split, dataset_root, file_fingerprint
from harness.data.index import open_listed
from harness.data.registry import register_format
from harness.errors import DataError, DataMissing

LAYOUT = "root/pairs.txt (View 2) and images root/lfw/<name>/<name>_0001.jpg (or root/<name>/<name>_0001.jpg)"


def _int(tok: str) -> int | None:
    try:
        return int(tok)
    except ValueError:
        return None


def parse_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, int, str, int]], np.ndarray]:
    """``(pairs, issame)`` from an LFW ``pairs.txt``: ``(name1, n1, name2, n2)`` in file order."""
    source = os.fspath(path)
    with open(source, encoding="utf-8") as f:
        lines = [(i + 1, line.split()) for i, line in enumerate(f)]
    lines = [(no, toks) for no, toks in lines if toks]
    if not lines:
        raise DataError(f"{source}: empty; expected {LAYOUT}")
    header: list[int] | None = None
    first = lines[0][1]
    if len(first) <= 2 and all(_int(t) is not None for t in first):
        header = [int(t) for t in first]
        lines = lines[1:]
    pairs: list[tuple[str, int, str, int]] = []
    same: list[bool] = []
    for no, toks in lines:
        if len(toks) == 3 and _int(toks[1]) is not None and _int(toks[2]) is not None:
            pairs.append((toks[0], int(toks[1]), toks[0], int(toks[2])))
            same.append(True)
        elif len(toks) == 4 and _int(toks[1]) is not None and _int(toks[3]) is not None:
            pairs.append((toks[0], int(toks[1]), toks[2], int(toks[3])))
            same.append(False)
        else:
            raise DataError(
                f"{source}:{no}: {' '.join(toks)!r} is not a pair line; expected "
                f"'name n1 n2' (matched) or 'name1 n1 name2 n2' (mismatched)"
            )
    if header is not None and len(header) == 2:
        expected = 2 * header[0] * header[1]
        if expected != len(pairs):
            raise DataError(
                f"{source}: the header '{header[0]} {header[1]}' promises "
                f"{expected} pair lines ({header[0]} sets of {header[1]} matched + "
                f"{header[1]} mismatched) but the file has {len(pairs)}"
            )
    if not pairs:
        raise DataError(f"{source}: no pair lines; expected {LAYOUT}")
    return pairs, np.asarray(same, dtype=np.bool_)


def image_folder(root: Path) -> Path:
    """``root/lfw`` when it is a folder, else ``root``."""
    sub = root / "lfw"
    return sub if sub.is_dir() else root


@register_format("lfw-pairs", types=("verification",))
def open_lfw_pairs(spec, index_dir: str | os.PathLike | None = None) -> Dataset:
    root, where = dataset_root(spec, LAYOUT)
    pairs_file = root / "pairs.txt"
    if not pairs_file.is_file():
        raise DataMissing(f"{where}: no pairs.txt; expected {LAYOUT}")
    pairs, issame = parse_pairs(pairs_file)
    images = image_folder(root)
    items: list[str] = []
    for name1, n1, name2, n2 in pairs:
        for name, n in ((name1, n1), (name2, n2)):
            items.append(os.path.join(images, name, f"{name}_{n:04d}.jpg"))
    listed = open_listed(items, index_dir)
    bad = listed.first_problem()
    if bad is not None:
        i, problem = bad
        raise DataError(
            f"{pairs_file}: pair {i // 2 + 1} of {len(pairs)} lists {items[i]}, which "
            f"{problem}; every listed image is needed (a skipped pair would shift "
            f"the folds); expected {LAYOUT}"
        )
    parts = ["lfw-pairs", file_fingerprint(pairs_file), f"listed-v1|{listed.fingerprint}"]
    split = Split("test", items, None, meta={"issame": issame}, fingerprint_parts=parts)
    return Dataset(spec.id, {"test": split}, meta={"format": "lfw-pairs", "images": str(images)})
