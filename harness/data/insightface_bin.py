"""Format ``insightface-bin``: an InsightFace verification pack (``lfw.bin``, ``cfp_fp.bin``,
``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``, ...).

``root`` is the ``.bin`` file itself.  It is a pickle of ``(bins, issame)``: ``bins`` holds
``2N`` encoded images (raw bytes, or numpy ``uint8`` arrays of the encoded bytes), images
``2i`` and ``2i+1`` form pair ``i``, and ``issame`` holds ``N`` booleans.  Packs written under
Python 2 are read with ``encoding="bytes"``.

A pickle can run arbitrary code when it is loaded, so the pack is read by the one restricted
unpickler, :func:`harness.safe_pickle.safe_load` (see its module for the admitted globals),
narrowed here to ``uint8`` and ``bool`` arrays.

The dataset has one split, ``test``: ``items`` are the ``2N`` encoded images as ``bytes``,
``labels`` is ``None`` and ``meta["issame"]`` is a ``numpy.bool_`` array of ``N``.  Its
fingerprint is the file's path, size and modification time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from harness.data.base import Dataset, Split, dataset_root, file_fingerprint, register_format
from harness.errors import DataError
from harness.safe_pickle import SafeUnpickler  # noqa: F401 (re-exported)
from harness.safe_pickle import safe_load as _safe_load

LAYOUT = "root = the .bin file: a pickle of (bins, issame) with 2N encoded images and N bools"


def safe_load(path: str | os.PathLike, *, encoding: str = "bytes") -> Any:
    """The pack's pickle through :func:`harness.safe_pickle.safe_load`: uint8 / bool arrays only."""
    return _safe_load(path, encoding=encoding, dtypes=("u1", "b1"), expected=LAYOUT)


def _as_bytes(x: Any, source: str, i: int) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x.tobytes()
    if isinstance(x, str):
        return x.encode("latin1")
    raise DataError(
        f"{source}: image {i} is a {type(x).__name__}, expected encoded image bytes or a numpy uint8 array"
    )


def read_pack(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """``(images, issame)`` of a .bin pack: ``2N`` encoded images and ``N`` bools."""
    source = os.fspath(path)
    obj = safe_load(source)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(
            f"{source}: the pickle holds a {type(obj).__name__}"
            f"{' of length ' + str(len(obj)) if isinstance(obj, (tuple, list)) else ''}"
            f", expected {LAYOUT}"
        )
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype == np.uint8 and bins.ndim == 2:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise DataError(f"{source}: bins is a {type(bins).__name__}, expected a list of encoded images")
    images = [_as_bytes(b, source, i) for i, b in enumerate(bins)]
    same = np.asarray(issame if not isinstance(issame, (list, tuple)) else [bool(s) for s in issame])
    if same.ndim != 1 or not (same.dtype == np.bool_ or np.issubdtype(same.dtype, np.integer)):
        raise DataError(
            f"{source}: issame must be a flat list of booleans, got dtype {same.dtype} shape {same.shape}"
        )
    if same.dtype != np.bool_:
        if not np.all((same == 0) | (same == 1)):
            raise DataError(f"{source}: issame holds values other than 0/1")
        same = same == 1
    if len(images) % 2:
        raise DataError(
            f"{source}: {len(images)} images is an odd count; pairs need 2N images "
            f"for the {len(same)} issame flags"
        )
    if len(same) != len(images) // 2:
        raise DataError(
            f"{source}: {len(images)} images make {len(images) // 2} pairs but "
            f"issame has {len(same)} flags; expected 2N images for N flags"
        )
    return images, same.astype(np.bool_)


@register_format("insightface-bin", types=("verification",))
def open_insightface_bin(spec) -> Dataset:
    path, _where = dataset_root(spec, LAYOUT, kind="file")
    images, issame = read_pack(path)
    split = Split(
        "test",
        images,
        None,
        meta={"issame": issame},
        fingerprint_parts=["insightface-bin", file_fingerprint(path)],
    )
    return Dataset(spec.id, {"test": split}, meta={"format": "insightface-bin"})
