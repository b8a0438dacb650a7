"""The one restricted unpickler: plain data only, for every pickle a dataset ships.

InsightFace ``.bin`` verification packs and CIFAR's python batches are pickles, and a pickle
can run arbitrary code when loaded.  :func:`safe_load` reads them with :class:`SafeUnpickler`,
which resolves only these globals and refuses every other one with
:class:`harness.errors.UnsafePickleError` (nothing is called before the refusal):

* ``numpy.ndarray``, ``numpy.dtype`` and ``numpy[._]core.multiarray._reconstruct`` /
  ``numpy[._]core.numeric._frombuffer`` / ``numpy[._]core.multiarray.scalar`` (numpy 1 and 2
  spellings, pickle protocols 2 to 5), each replaced by a stand-in that accepts only plain
  numeric dtypes (bool, signed / unsigned integers, floats; no object, structured or
  sub-array dtype) and builds the array itself with ``numpy.frombuffer`` (numpy's own
  reconstruction code never sees the pickled state).  A caller may narrow the dtypes further
  (``dtypes=``): the ``.bin`` reader admits only ``uint8`` and ``bool``;
* ``_codecs.encode(text, "latin1")``, the way pickle protocol 2 spells Python 3 ``bytes``;
* ``builtins.bytearray``.

Containers (list, tuple, dict), bools, ints, floats, str and bytes need no global.  Persistent
ids are refused.  A file that is not a readable pickle raises :class:`DataError`.

(Model checkpoints are torch files and are read by :mod:`harness.models.checkpoints` with
``torch.load(weights_only=True)``.)
"""

from __future__ import annotations

import contextvars
import os
import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np

from harness.errors import DataError, UnsafePickleError

#: Every dtype the unpickler can admit (native byte order names; ``<``, ``>``, ``|``, ``=``
#: prefixes are accepted and applied).
NUMERIC_DTYPES: tuple[str, ...] = ("b1", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8")
_ALIASES = {
    "bool": "b1",
    "uint8": "u1",
    "int8": "i1",
    "uint16": "u2",
    "int16": "i2",
    "uint32": "u4",
    "int32": "i4",
    "uint64": "u8",
    "int64": "i8",
    "float16": "f2",
    "float32": "f4",
    "float64": "f8",
}
_allowed: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "safe_pickle_dtypes", default=frozenset(NUMERIC_DTYPES)
)


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
    """Stand-in for ``numpy.dtype(name, align, copy)``: an admitted plain numeric dtype only."""

    __slots__ = ("dtype",)

    def __init__(self, name: Any, *_args: Any) -> None:
        key = _text(name)
        code = _ALIASES.get(key, key.lstrip("<>|="))
        allowed = _allowed.get()
        if code not in allowed:
            raise _Refused(f"dtype {key!r} (admitted here: {', '.join(sorted(allowed))})")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags): a plain
        # dtype has no sub-array, names or fields.
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise _Refused("a structured or sub-array dtype")
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise _Refused(f"byte order {order!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder("<" if order == "<" else ">")


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
    if isinstance(raw, str):  # text-mode data (protocol 0-2 read as str)
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused(f"array data of type {type(raw).__name__}")
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
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


_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _CodecsEncode,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
}
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
                f"only plain data (containers, strings, numbers, numeric numpy arrays) is "
                f"admitted, so it was refused without running it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self.source}: the pickle uses persistent ids ({pid!r}); refused, nothing was loaded"
        )


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


def safe_load(
    path: str | os.PathLike,
    *,
    encoding: str = "bytes",
    dtypes: Iterable[str] = NUMERIC_DTYPES,
    expected: str = "a pickle of plain data",
) -> Any:
    """Unpickle ``path`` admitting only plain data (see the module docstring).

    ``encoding``: how Python 2 ``str`` is read (``"bytes"`` or ``"latin1"``); ``dtypes``: the
    admitted array dtypes (a subset of :data:`NUMERIC_DTYPES`); ``expected``: what the file
    should be, for messages.  Raises :class:`UnsafePickleError` (naming the file and the
    global) for anything else and :class:`DataError` for a file that is not a readable pickle.
    """
    source = os.fspath(path)
    allowed = frozenset(dtypes)
    if not allowed <= set(NUMERIC_DTYPES):
        raise ValueError(f"dtypes {sorted(allowed - set(NUMERIC_DTYPES))} are not plain numeric")
    token = _allowed.set(allowed)
    try:
        with open(source, "rb") as f:
            obj = SafeUnpickler(f, source=source, encoding=encoding).load()
        return _unwrap(obj)
    except UnsafePickleError:
        raise
    except _Refused as e:
        raise UnsafePickleError(f"{source}: refused pickle content: {e}; nothing was loaded") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        MemoryError,
        OverflowError,
        RecursionError,
        OSError,
    ) as e:
        raise DataError(
            f"{source}: not a readable pickle ({type(e).__name__}: {e}); expected {expected}"
        ) from None
    finally:
        _allowed.reset(token)
