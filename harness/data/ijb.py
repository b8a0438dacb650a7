"""Format ``ijb``: IJB-B / IJB-C 1:1 template verification in InsightFace's release layout.

Layout (``X`` is ``ijbb`` or ``ijbc``)::

    root/
      meta/X_face_tid_mid.txt         "image template_id media_id" per image
      meta/X_template_pair_label.txt  "template_id1 template_id2 label" per pair (1 = genuine)
      meta/X_name_5pts_score.txt      "image x1 y1 ... x5 y5 detector_score" per image
      loose_crop/<image>              the loosely cropped images

The set is detected from the files present: the prefix ``X`` whose three meta files all exist.
When both ``ijbb_*`` and ``ijbc_*`` sets are complete, the root folder's name decides (one
containing ``ijbb`` or ``ijbc``, any case, e.g. ``IJBC/``); otherwise it is an error.

Images follow ``X_face_tid_mid.txt`` order; landmarks and detector scores are joined by image
name (every listed image needs a landmark line, and the image file must exist).

One split, ``test``: ``items`` are the image paths; the ``reader``
(:class:`harness.data.align.FivePointAligner`, picklable) aligns each image from its five
landmarks to the ArcFace 112x112 template and returns an RGB PIL image.  ``meta``:
``template_id``, ``media_id`` (int64 ``[M]``), ``faceness`` (float64 ``[M]``, the detector
score), ``landmarks`` (float32 ``[M, 5, 2]``), ``pairs`` (int64 ``[P, 2]`` template ids),
``pair_label`` (int8 ``[P]``) and ``set`` (``"ijbb"`` / ``"ijbc"``).  The fingerprint covers
the three meta files, the alignment (template and size) and every image (path, size, mtime).
Every listed image must be a regular file; the images are checked through the persisted list
index (:func:`harness.data.index.open_listed`), so a warm open stats ``loose_crop/`` (and any
sub-folder the names use), not each of IJB-C's 469k crops.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from harness.data.align import ALIGNED_SIZE, ARCFACE_TEMPLATE_112, FivePointAligner
from harness.data.base import (
    Dataset,
    Split,
    dataset_root,
    file_fingerprint,
    register_format,
)
from harness.data.index import open_listed
from harness.errors import DataError, DataMissing

SETS = ("ijbb", "ijbc")
LAYOUT = (
    "root/meta/{ijbb|ijbc}_face_tid_mid.txt, root/meta/{ijbb|ijbc}_template_pair_label.txt, "
    "root/meta/{ijbb|ijbc}_name_5pts_score.txt and root/loose_crop/<images>"
)


def meta_files(meta: Path, prefix: str) -> dict[str, Path]:
    return {
        "tid_mid": meta / f"{prefix}_face_tid_mid.txt",
        "pairs": meta / f"{prefix}_template_pair_label.txt",
        "landmarks": meta / f"{prefix}_name_5pts_score.txt",
    }


def detect_set(root: Path) -> str:
    """``"ijbb"`` or ``"ijbc"``: the prefix whose three meta files exist under ``root/meta``."""
    meta = root / "meta"
    complete = [p for p in SETS if all(f.is_file() for f in meta_files(meta, p).values())]
    if len(complete) == 1:
        return complete[0]
    if len(complete) == 2:
        hinted = [p for p in SETS if p in root.name.lower()]
        if len(hinted) == 1:
            return hinted[0]
        raise DataError(
            f"{meta}: holds both the ijbb_* and the ijbc_* meta files and the folder "
            f"name {root.name!r} names neither; put each set in its own root "
            f"(e.g. IJBB/ and IJBC/)"
        )
    partial = sorted(f.name for p in SETS for f in meta_files(meta, p).values() if f.is_file())
    have = f"; found only {partial}" if partial else ""
    raise DataMissing(f"{meta}: no complete IJB-B or IJB-C meta set{have}; expected {LAYOUT}")


def _rows(path: Path, ncols: int, what: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = [line.split() for line in f]
    rows = [r for r in rows if r]
    for i, r in enumerate(rows):
        if len(r) != ncols:
            raise DataError(f"{path}: line {i + 1} has {len(r)} fields, expected {ncols} ({what})")
    if not rows:
        raise DataError(f"{path}: empty; expected lines of {what}")
    return rows


def read_tid_mid(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(image names, template ids, media ids)`` from ``X_face_tid_mid.txt``."""
    rows = _rows(path, 3, "image template_id media_id")
    names = [r[0] for r in rows]
    try:
        ids = np.array([(r[1], r[2]) for r in rows], dtype=np.int64)
    except ValueError as e:
        raise DataError(f"{path}: template / media ids must be integers ({e})") from None
    return names, ids[:, 0].copy(), ids[:, 1].copy()


def read_landmarks(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(image names, landmarks [M, 5, 2], detector scores [M])`` from ``X_name_5pts_score.txt``."""
    rows = _rows(path, 12, "image x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score")
    names = [r[0] for r in rows]
    try:
        values = np.array([r[1:] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: landmarks and scores must be numbers ({e})") from None
    return names, values[:, :10].reshape(-1, 5, 2), values[:, 10].copy()


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs [P, 2] int64 template ids, labels [P] int8)`` from ``X_template_pair_label.txt``."""
    try:
        data = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataError(
            f"{path}: expected lines 'template_id1 template_id2 label' of integers ({e})"
        ) from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: empty; expected lines 'template_id1 template_id2 label'")
    if data.shape[1] != 3:
        raise DataError(f"{path}: {data.shape[1]} columns, expected 3 (template_id1 template_id2 label)")
    labels = data[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 1} has label {labels[bad[0]]}, expected 0 or 1")
    return np.ascontiguousarray(data[:, :2]), labels.astype(np.int8)


@register_format("ijb", types=("ijb",))
def open_ijb(spec, index_dir: str | os.PathLike | None = None) -> Dataset:
    root, where = dataset_root(spec, LAYOUT)
    prefix = detect_set(root)
    files = meta_files(root / "meta", prefix)
    crops = root / "loose_crop"
    if not crops.is_dir():
        raise DataMissing(f"{where}: no loose_crop/ folder; expected {LAYOUT}")

    names, template_id, media_id = read_tid_mid(files["tid_mid"])
    lm_names, landmarks, faceness = read_landmarks(files["landmarks"])
    row_of = {n: i for i, n in enumerate(lm_names)}
    if len(row_of) != len(lm_names):
        raise DataError(f"{files['landmarks']}: an image name is listed twice")
    try:
        rows = np.array([row_of[n] for n in names], dtype=np.int64)
    except KeyError as e:
        raise DataError(
            f"{files['landmarks']}: no landmark line for image {e.args[0]} listed in {files['tid_mid']}"
        ) from None
    landmarks = landmarks[rows].astype(np.float32)
    faceness = faceness[rows]
    pairs, pair_label = read_pairs(files["pairs"])

    known = np.unique(template_id)
    pos = np.minimum(np.searchsorted(known, pairs), len(known) - 1)
    missing = known[pos] != pairs
    if missing.any():
        i, j = np.argwhere(missing)[0]
        raise DataError(
            f"{files['pairs']}: line {i + 1} names template {pairs[i, j]}, which has "
            f"no image in {files['tid_mid']}"
        )

    items = [os.path.join(crops, n) for n in names]
    parts = [
        "ijb",
        prefix,
        *(file_fingerprint(f) for f in files.values()),
        "align=umeyama5/"
        + ",".join(f"{v:.4f}" for v in ARCFACE_TEMPLATE_112.ravel())
        + f"/{ALIGNED_SIZE[0]}x{ALIGNED_SIZE[1]}/bilinear",
    ]
    listed = open_listed(items, index_dir)
    bad = listed.first_problem()
    if bad is not None:
        path = items[bad[0]]
        raise DataError(
            f"{files['tid_mid']}: lists {os.path.basename(path)}, but {path} {bad[1]}; expected {LAYOUT}"
        )
    parts.append(f"listed-v1|{listed.fingerprint}")

    reader = FivePointAligner({p: i for i, p in enumerate(items)}, landmarks)
    meta = {
        "template_id": template_id,
        "media_id": media_id,
        "faceness": faceness,
        "landmarks": landmarks,
        "pairs": pairs,
        "pair_label": pair_label,
        "set": prefix,
    }
    split = Split("test", items, None, meta=meta, reader=reader, fingerprint_parts=parts)
    return Dataset(spec.id, {"test": split}, meta={"format": "ijb", "set": prefix})
