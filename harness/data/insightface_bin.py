"""Format ``insightface-bin``: an InsightFace verification pack (``lfw.bin``, ``cfp_fp.bin``,
``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``, ...).

``root`` is the ``.bin`` file itself.  It is a pickle of ``(bins, issame)``: ``bins`` holds
``2N`` encoded images (raw bytes, or numpy ``uint8`` arrays of the encoded bytes), images
``2i`` and ``2i+1`` form pair ``i``, and ``issame`` holds ``N`` booleans.  Packs written under
Python 2 are read with ``encoding="bytes"``.

A pickle can run arbitrary code when it is loaded, so the pack is read with
:class:`SafeUnpickler`, which resolves only these globals and refuses every other one with
:class:`harness.errors.UnsafePickleError` (nothing is called before the refusal):

* ``numpy.ndarray``, ``numpy.dtype`` and ``numpy[._]core.multiarray._reconstruct`` /
  ``numpy[._]core.numeric._frombuffer`` / ``numpy[._]core.multiarray.scalar`` (numpy 1 and 2
  spellings, pickle protocols 2 to 5), each replaced by a stand-in that accepts only the
  ``uint8`` and ``bool`` dtypes and builds the array itself with ``numpy.frombuffer`` (numpy's
  own reconstruction code never sees the pickled state);
* ``_codecs.encode(text, "latin1")``, the way pickle protocol 2 spells Python 3 ``bytes``;
* ``builtins.bytearray``.

Containers (list, tuple, dict), bools, ints, floats, str and bytes need no global.

The dataset has one split, ``test``: ``items`` are the ``2N`` encoded images as ``bytes``,
``labels`` is ``None`` and ``meta["issame"]`` is a ``numpy.bool_`` array of ``N``.  Its
fingerprint is the file's path, size and modification time.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from harness.data.base import Dataset, Split, dataset_root, file_fingerprint, register_format
from harness.errors import DataError, UnsafePickleError

LAYOUT = "root = the .bin file: a pickle of (bins, issame) with 2N encoded images and N bools"

_ALLOWED_DTYPES = {"u1": np.dtype(np.uint8), "|u1": np.dtype(np.uint8),
                   "uint8": np.dtype(np.uint8), "b1": np.dtype(np.bool_),
                   "|b1": np.dtype(np.bool_), "bool": np.dtype(np.bool_)}


class _Refused(Exception):
    """A stand-in was handed something other than plain uint8 / bool data."""


class _Frozen(type):
    """Metaclass of the stand-ins: a pickle's BUILD opcode cannot set attributes on them."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _Refused(f"an attempt to set {cls.__name__}.{name}")

    def __delattr__(cls, name: str) -> None:
        raise _Refused(f"an attempt to delete {cls.__name__}.{name}")


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("ascii", "replace")
    if isinstance(x, str):
        return x
    raise _Refused(f"expected a name, got {type(x).__name__}")


class _DType(metaclass=_Frozen):
    """Stand-in for ``numpy.dtype(name, align, copy)``: uint8 or bool only."""

    __slots__ = ("dtype",)

    def __init__(self, name: Any, *_args: Any) -> None:
        key = _text(name)
        if key not in _ALLOWED_DTYPES:
            raise _Refused(f"dtype {key!r} (only uint8 and bool arrays are admitted)")
        self.dtype = _ALLOWED_DTYPES[key]

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags): a plain
        # one-byte dtype has no sub-array, names or fields.
        if not isinstance(state, tuple) or len(state) < 5 or any(
                s is not None for s in state[2:5]):
            raise _Refused("a structured or sub-array dtype")


class _NDArrayClass(metaclass=_Frozen):
    """Stand-in for the ``numpy.ndarray`` class (only ever an argument of ``_reconstruct``)."""

    __slots__ = ()

    def __new__(cls, *_args: Any) -> Any:
        raise _Refused("a direct call of numpy.ndarray")


class _Array(metaclass=_Frozen):
    """Stand-in for ``_reconstruct(ndarray, shape, typecode)`` followed by ``__setstate__``."""

    __slots__ = ("array",)

    def __init__(self, cls: Any, *_args: Any) -> None:
        if cls is not _NDArrayClass:
            raise _Refused("_reconstruct of a class other than numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, rawdata) or, oldest, without the version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("an ndarray state of unexpected form")
        shape, dt, fortran, raw = state[-4:]
        self.array = _build(raw, dt, shape, "F" if fortran else "C")


def _build(raw: Any, dt: Any, shape: Any, order: Any) -> np.ndarray:
    if type(dt) is not _DType:
        raise _Refused("an array whose dtype is not a plain uint8 / bool dtype")
    if isinstance(raw, str):          # text-mode data (protocol 0-2 read as str)
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused(f"array data of type {type(raw).__name__}")
    if not isinstance(shape, tuple) or not all(
            type(d) is int and d >= 0 for d in shape):
        raise _Refused("an array shape that is not a tuple of non-negative ints")
    order = _text(order)
    if order not in ("C", "F"):
        raise _Refused(f"array order {order!r}")
    arr = np.frombuffer(bytes(raw), dtype=dt.dtype)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise _Refused(f"{arr.size} array elements for shape {shape}")
    return arr.reshape(shape, order=order)


class _FromBuffer(metaclass=_Frozen):
    """Stand-in for ``numpy._core.numeric._frombuffer(buf, dtype, shape, order)`` (protocol 5)."""

    __slots__ = ()

    def __new__(cls, buf: Any, dt: Any, shape: Any, order: Any = "C") -> Any:
        return _build(buf, dt, shape, order)


class _Scalar(metaclass=_Frozen):
    """Stand-in for ``numpy._core.multiarray.scalar(dtype, raw)``: a uint8 / bool scalar."""

    __slots__ = ()

    def __new__(cls, dt: Any, raw: Any = b"") -> Any:
        return _build(raw, dt, (1,), "C")[0]


class _CodecsEncode(metaclass=_Frozen):
    """Stand-in for ``_codecs.encode(text, "latin1")``: how protocol 2 spells ``bytes``."""

    __slots__ = ()

    def __new__(cls, text: Any, encoding: Any = "utf-8", *_args: Any) -> Any:
        if not isinstance(text, str) or _text(encoding).lower().replace("-", "") != "latin1":
            raise _Refused("_codecs.encode other than (str, 'latin1')")
        return text.encode("latin1")


_GLOBALS: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDArrayClass,
                                         ("numpy", "dtype"): _DType,
                                         ("_codecs", "encode"): _CodecsEncode,
                                         ("builtins", "bytearray"): bytearray,
                                         ("__builtin__", "bytearray"): bytearray}
for _core in ("numpy.core", "numpy._core"):
    _GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _Array
    _GLOBALS[(f"{_core}.multiarray", "scalar")] = _Scalar
    _GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _FromBuffer


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals listed in this module's docstring."""

    def __init__(self, file, *, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: the pickle references the forbidden global {module}.{name}; "
                f"only plain data (containers, bytes, bools, numpy uint8 arrays) is admitted "
                f"in an InsightFace .bin pack, so nothing was loaded") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: the pickle uses persistent ids "
                                f"({pid!r}); not an InsightFace .bin pack, nothing was loaded")


def _unwrap(obj: Any) -> Any:
    """Replace the array stand-ins by their arrays inside containers."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise _Refused("an ndarray without state")
        return obj.array
    if isinstance(obj, (_DType, _Frozen)) or obj is bytearray:
        raise _Refused("a bare numpy dtype or class outside an array")
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {_unwrap(k): _unwrap(v) for k, v in obj.items()}
    return obj


def safe_load(path: str | os.PathLike, *, encoding: str = "bytes") -> Any:
    """Unpickle ``path`` admitting only plain data (see the module docstring).

    Raises :class:`UnsafePickleError` (naming the file and the global) for anything else and
    :class:`DataError` for a file that is not a readable pickle.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            obj = SafeUnpickler(f, source=source, encoding=encoding).load()
        return _unwrap(obj)
    except UnsafePickleError:
        raise
    except _Refused as e:
        raise UnsafePickleError(f"{source}: refused pickle content: {e}; nothing was loaded"
                                ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError, OverflowError,
            RecursionError, OSError) as e:
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e}); "
                        f"expected {LAYOUT}") from None


def _as_bytes(x: Any, source: str, i: int) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x.tobytes()
    if isinstance(x, str):
        return x.encode("latin1")
    raise DataError(f"{source}: image {i} is a {type(x).__name__}, expected encoded image "
                    f"bytes or a numpy uint8 array")


def read_pack(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """``(images, issame)`` of a .bin pack: ``2N`` encoded images and ``N`` bools."""
    source = os.fspath(path)
    obj = safe_load(source)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{source}: the pickle holds a {type(obj).__name__}"
                        f"{' of length ' + str(len(obj)) if isinstance(obj, (tuple, list)) else ''}"
                        f", expected {LAYOUT}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype == np.uint8 and bins.ndim == 2:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise DataError(f"{source}: bins is a {type(bins).__name__}, expected a list of "
                        f"encoded images")
    images = [_as_bytes(b, source, i) for i, b in enumerate(bins)]
    same = np.asarray(issame if not isinstance(issame, (list, tuple))
                      else [bool(s) for s in issame])
    if same.ndim != 1 or not (same.dtype == np.bool_ or np.issubdtype(same.dtype, np.integer)):
        raise DataError(f"{source}: issame must be a flat list of booleans, got "
                        f"dtype {same.dtype} shape {same.shape}")
    if same.dtype != np.bool_:
        if not np.all((same == 0) | (same == 1)):
            raise DataError(f"{source}: issame holds values other than 0/1")
        same = same == 1
    if len(images) % 2:
        raise DataError(f"{source}: {len(images)} images is an odd count; pairs need 2N images "
                        f"for the {len(same)} issame flags")
    if len(same) != len(images) // 2:
        raise DataError(f"{source}: {len(images)} images make {len(images) // 2} pairs but "
                        f"issame has {len(same)} flags; expected 2N images for N flags")
    return images, same.astype(np.bool_)


@register_format("insightface-bin", types=("verification",))
def open_insightface_bin(spec) -> Dataset:
    path, where = dataset_root(spec, LAYOUT, kind="file")
    images, issame = read_pack(path)
    split = Split("test", images, None, meta={"issame": issame},
                  fingerprint_parts=["insightface-bin", file_fingerprint(path)])
    return Dataset(spec.id, {"test": split}, meta={"format": "insightface-bin"})
