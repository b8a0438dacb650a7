"""Format ``wds``: a classification dataset in CLIP_benchmark's WebDataset layout.

Layout (what ``clip_benchmark_export_wds`` writes and the ``clip-benchmark/wds_*`` collection
on the Hugging Face hub distributes)::

    root/
      train/nshards.txt          one integer N; the shards are train/0.tar ... train/{N-1}.tar
      train/0.tar ...            (optional: without train/ only zero-shot runs)
      test/nshards.txt, test/0.tar ...     (required)
      val/nshards.txt, val/0.tar ...       (optional, read when present)
      classnames.txt             one class name per line, line i = label i
      zeroshot_classification_templates.txt   one template per line, ``{c}`` = the class name
      dataset_type.txt           optional; absent or ``classification`` (retrieval and
                                 multilabel shards are not classification data)

A sample is the run of consecutive tar members that share a key (the member name up to the
first ``.`` of its base name, as webdataset groups them).  Its image is the first of the
extensions ``webp``, ``png``, ``jpg``, ``jpeg`` present (CLIP_benchmark's order) and its label
the integer text of the ``cls`` member.  A sample without one of them stays in the split with
label -1 and reads as an unreadable image (listed as ``<shard>:<key>``), so the usual 1 % limit
of :func:`harness.features.check_unreadable` applies.  Samples are in shard order, then in tar
order.

How it reads, and why the standard library rather than the ``webdataset`` package: feature
extraction loads images by index (``split.load(i)``) from DataLoader workers.  webdataset is a
sequential iterator; using it would mean either unpacking or giving up the index-addressed,
resumable, worker-parallel loader every other format uses.  So each shard is indexed once with a
small tar header scanner (POSIX ustar, pax ``path``/``size`` records and GNU long names, the
forms Python's ``tarfile`` -- which webdataset's writer uses -- produces): the byte offset and
size of every image member and the value of every ``cls`` member.  ``load(i)`` is then one
``os.pread`` in the shard file; each worker process opens its own read-only descriptors.
Nothing is unpacked.  The scanner reads the headers (in 64 KiB windows), not the images
(about 15 us of CPU per sample); its result is memoised per process and persisted as a small
``.npz`` under :func:`index_dir` (``$HARNESS_CACHE/wds-index``), keyed by the shard's path, size
and mtime, so a warm run reads one small file per shard instead of scanning it.

The split fingerprint (the feature-cache key) is cheap: every shard's path, size and mtime, the
two text files' path, size and mtime, and the labels.

Bad input: a shard that ``nshards.txt`` lists and that is absent, a truncated or damaged tar, an
``nshards.txt`` that is not an integer, and a ``classnames.txt`` whose length differs from the
largest label + 1 are each a one-line :class:`~harness.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from harness.data.base import Dataset, Split, dataset_root, decode_image, file_fingerprint, register_format
from harness.data.prompts import FORMAT_TEMPLATES
from harness.errors import DataError, DataMissing

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference
LABEL_KEY = "cls"
SPLITS = ("train", "val", "test")
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
DATASET_TYPE = "dataset_type.txt"

LAYOUT = (
    "root/test/nshards.txt + root/test/0.tar ... (required), root/train/ likewise "
    "(optional), root/classnames.txt, root/zeroshot_classification_templates.txt"
)

_BLOCK = 512
_FILE = (b"0", b"\0", b"7")  # regular-file type flags
_ZERO = bytes(_BLOCK)
_WINDOW = 1 << 16
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key / extension split

# Problems of a sample (index into _PROBLEMS); 0 = none.
_PROBLEMS = ("", "no image (webp, png, jpg or jpeg)", "no 'cls' label", "'cls' is not an integer >= 0")
_NO_IMAGE, _NO_LABEL, _BAD_LABEL = 1, 2, 3


# ---------------------------------------------------------------------------------- index


@dataclass
class ShardIndex:
    """Where each sample of one shard lies: image byte ``offset``/``size`` (-1 when absent),
    ``label`` (-1 when absent or bad), ``problem`` (0 = none) and the sample ``keys``."""

    keys: list[str]
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    problem: np.ndarray


class _Window:
    """Reads of a file by position, served from one cached 64 KiB window."""

    def __init__(self, fd: int):
        self.fd = fd
        self.start = 0
        self.buf = b""

    def read(self, pos: int, n: int) -> bytes:
        off = pos - self.start
        if off < 0 or off + n > len(self.buf):
            self.buf = os.pread(self.fd, max(n, _WINDOW), pos)
            self.start, off = pos, 0
        return self.buf[off : off + n]


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[str, str]:
    """pax extended-header records ``"LEN key=value\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        length = int(data[pos:sp])
        if length <= 0:
            break
        rec = data[sp + 1 : pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        pos += length
    return out


def _not_tar(head: bytes) -> str:
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the shard (fetch it with git lfs pull)"
    return "not a tar archive"


def _members(path: str):
    """Yield ``(name, data_offset, size, window)`` for every regular file in a tar archive.

    Raises DataError (one line, naming ``path``) when the archive is truncated or a header is
    damaged."""
    fd = os.open(path, os.O_RDONLY)
    try:
        filesize = os.fstat(fd).st_size
        win = _Window(fd)
        pos = 0
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            hdr = win.read(pos, _BLOCK)
            if len(hdr) < _BLOCK:
                if pos == 0:
                    raise DataError(
                        f"{path}: {_not_tar(hdr)} ({filesize} bytes); expected a WebDataset .tar shard"
                    )
                raise DataError(
                    f"{path}: truncated tar archive: it ends at byte {filesize} "
                    f"{'inside a member header' if hdr else 'without the end-of-archive blocks'}"
                    "; download or copy the shard again"
                )
            if hdr == _ZERO:
                return  # end of archive (a second zero block and padding may follow)
            kind = hdr[156:157]
            try:
                # checksums of the first header and of every file header
                if (pos == 0 or kind in _FILE) and _octal(hdr[148:156]) != sum(hdr) - sum(hdr[148:156]) + 256:
                    raise ValueError
                size = int(pax["size"]) if "size" in pax else _octal(hdr[124:136])
            except ValueError:
                what = _not_tar(hdr) if pos == 0 else f"damaged tar header at byte {pos}"
                raise DataError(
                    f"{path}: {what} (bad header checksum or size); expected a WebDataset .tar shard"
                ) from None
            data_at = pos + _BLOCK
            if data_at + size > filesize:
                raise DataError(
                    f"{path}: truncated tar archive: a member at byte {pos} needs "
                    f"{size} bytes but the file ends at byte {filesize}; download or "
                    "copy the shard again"
                )
            if kind in (b"x", b"X"):
                try:
                    rec = win.read(data_at, size)
                    # only path and size matter here (webdataset's writer adds mtime only)
                    pax = _pax(rec) if b" path=" in rec or b" size=" in rec else {}
                except ValueError:
                    raise DataError(
                        f"{path}: damaged pax header at byte {pos}; expected a WebDataset .tar shard"
                    ) from None
            elif kind == b"L":
                long_name = win.read(data_at, size).split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind in _FILE:
                if "path" in pax:
                    name = pax["path"]
                elif long_name is not None:
                    name = long_name
                else:
                    name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                    if hdr[257:263] == b"ustar\x00" and hdr[345] != 0:
                        prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                        name = f"{prefix}/{name}"
                yield name, data_at, size, win
                long_name, pax = None, {}
            else:  # directories, links, global pax headers, ...: not sample members
                if kind != b"g":
                    long_name, pax = None, {}
            pos = data_at + (size + _BLOCK - 1) // _BLOCK * _BLOCK
    finally:
        os.close(fd)


def scan_shard(path: str) -> ShardIndex:
    """Index one shard: group its members into samples by key (webdataset's rule)."""
    keys: list[str] = []
    offset: list[int] = []
    size: list[int] = []
    label: list[int] = []
    problem: list[int] = []
    cur: str | None = None
    img: dict[str, tuple[int, int]] = {}
    cls: bytes | None = None

    def close() -> None:
        if cur is None:
            return
        keys.append(cur)
        ext = next((e for e in IMAGE_KEYS if e in img), None)
        off, n = img[ext] if ext else (-1, -1)
        offset.append(off)
        size.append(n)
        lab, prob = -1, 0
        if cls is None:
            prob = _NO_LABEL
        else:
            try:
                lab = int(cls.strip())
            except ValueError:
                lab = -1
            if lab < 0:
                lab, prob = -1, _BAD_LABEL
        if ext is None:
            prob = _NO_IMAGE
        label.append(lab)
        problem.append(prob)

    for name, at, n, win in _members(path):
        m = _KEY.match(name)
        if m is None or os.path.basename(name).startswith("."):
            continue
        key, ext = m.group(1), m.group(2).lower()
        if key != cur:
            close()
            cur, img, cls = key, {}, None
        if ext in IMAGE_KEYS and ext not in img:
            img[ext] = (at, n)
        elif ext == LABEL_KEY and cls is None:
            cls = win.read(at, n) if n <= 64 else b"x"
    close()
    return ShardIndex(
        keys,
        np.asarray(offset, dtype=np.int64),
        np.asarray(size, dtype=np.int64),
        np.asarray(label, dtype=np.int64),
        np.asarray(problem, dtype=np.int8),
    )


_memo: dict[tuple[str, int, int], ShardIndex] = {}
_memo_lock = threading.Lock()
INDEX_VERSION = 1


def index_dir() -> Path:
    """Where shard indexes persist: ``$HARNESS_CACHE/wds-index``, else
    ``~/.cache/tradeoff-bench/wds-index`` (the feature cache's default folder)."""
    base = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tradeoff-bench"
    )
    return Path(base) / "wds-index"


def _index_file(k: tuple[str, int, int]) -> Path:
    h = hashlib.sha256(f"v{INDEX_VERSION}|{k[0]}|{k[1]}|{k[2]}".encode()).hexdigest()[:32]
    return index_dir() / h[:2] / f"{h}.npz"


def _load_index(path: Path) -> ShardIndex | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return ShardIndex(z["keys"].tolist(), z["offset"], z["size"], z["label"], z["problem"])
    except (OSError, ValueError, KeyError, EOFError):
        return None  # absent or damaged: scan again


def _save_index(path: Path, ix: ShardIndex) -> None:
    from harness._io import atomic_write

    keys = np.array(ix.keys, dtype=str) if ix.keys else np.zeros(0, dtype="U1")
    try:
        atomic_write(
            path,
            lambda f: np.savez(
                f, keys=keys, offset=ix.offset, size=ix.size, label=ix.label, problem=ix.problem
            ),
            binary=True,
        )
    except OSError:
        pass  # a read-only cache folder: the index is rebuilt next time


def shard_index(path: str) -> ShardIndex:
    """:func:`scan_shard`, memoised per process and persisted under :func:`index_dir`, both
    keyed by the shard's (path, size, mtime)."""
    st = os.stat(path)
    k = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _memo_lock:
        hit = _memo.get(k)
    if hit is None:
        file = _index_file(k)
        hit = _load_index(file)
        if hit is None:
            hit = scan_shard(path)
            _save_index(file, hit)
        with _memo_lock:
            _memo[k] = hit
    return hit


# ------------------------------------------------------------------------------ reading


class SampleRef(str):
    """``"<shard path>:<key>"`` (what error messages list) carrying where the image lies."""

    shard: int
    offset: int
    size: int
    problem: int


class SampleRefs(Sequence):
    """The items of a wds split: ``refs[i]`` is the :class:`SampleRef` of sample ``i``."""

    def __init__(
        self,
        shards: list[str],
        shard: np.ndarray,
        keys: list[str],
        offset: np.ndarray,
        size: np.ndarray,
        problem: np.ndarray,
    ):
        self.shards, self.shard, self.keys = shards, shard, keys
        self.offset, self.size, self.problem = offset, size, problem

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> SampleRef: ...
    @overload
    def __getitem__(self, i: slice) -> list[SampleRef]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s = int(self.shard[i])
        ref = SampleRef(f"{self.shards[s]}:{self.keys[i]}")
        ref.shard, ref.offset, ref.size = s, int(self.offset[i]), int(self.size[i])
        ref.problem = int(self.problem[i])
        return ref


class ShardReader:
    """Picklable reader: one ``os.pread`` per image; descriptors opened per process, lazily."""

    def __init__(self, shards: list[str]):
        self.shards = shards
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():  # a forked worker: open its own descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(s)
        if fd is None:
            try:
                fd = os.open(self.shards[s], os.O_RDONLY)
            except OSError as e:
                raise DataError(f"{self.shards[s]}: cannot open shard ({e.strerror})") from None
            self._fds[s] = fd
        return fd

    def read_bytes(self, ref: SampleRef) -> bytes:
        if ref.problem:
            raise ValueError(f"{ref}: {_PROBLEMS[ref.problem]}")
        data = os.pread(self._fd(ref.shard), ref.size, ref.offset)
        if len(data) != ref.size:
            raise DataError(
                f"{self.shards[ref.shard]}: shard shorter than when it was indexed "
                f"(sample {ref}); it changed during the run"
            )
        return data

    def __call__(self, ref: SampleRef) -> Image.Image:
        return decode_image(self.read_bytes(ref))

    def __getstate__(self) -> dict[str, Any]:
        return {"shards": self.shards, "_fds": {}, "_pid": -1}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown, a descriptor already closed
            if self._pid == os.getpid():
                for fd in self._fds.values():
                    os.close(fd)


# ------------------------------------------------------------------------------ opener


def _text_lines(path: Path) -> list[str]:
    """Lines as CLIP_benchmark reads them (stripped; an empty line in the middle is kept)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines()]


def _shards(folder: Path) -> list[str]:
    nfile = folder / "nshards.txt"
    try:
        text = nfile.read_text(encoding="utf-8").strip()
        n = int(text)
    except ValueError:
        raise DataError(f"{nfile}: expected one integer (the number of shards), got {text[:40]!r}") from None
    if n < 1:
        raise DataError(f"{nfile}: expected a number of shards >= 1, got {n}")
    shards = [str(folder / f"{i}.tar") for i in range(n)]
    for p in shards:
        if not os.path.isfile(p):
            raise DataError(f"{p}: shard missing (nshards.txt lists {n} shards, 0.tar .. {n - 1}.tar)")
    return shards


def _split(name: str, shards: list[str], texts: list[Path]) -> Split:
    idx = [shard_index(p) for p in shards]
    keys = [k for ix in idx for k in ix.keys]
    which = np.concatenate([np.full(len(ix.keys), s, dtype=np.int32) for s, ix in enumerate(idx)])
    refs = SampleRefs(
        shards,
        which,
        keys,
        np.concatenate([ix.offset for ix in idx]),
        np.concatenate([ix.size for ix in idx]),
        np.concatenate([ix.problem for ix in idx]),
    )
    labels = np.concatenate([ix.label for ix in idx])
    parts = [file_fingerprint(p) for p in shards] + [file_fingerprint(p) for p in texts]
    return Split(name, refs, labels, reader=ShardReader(shards), fingerprint_parts=parts)


@register_format("wds", types=("classification",))
def open_wds(spec) -> Dataset:
    root, where = dataset_root(spec, LAYOUT)
    if not (root / "test" / "nshards.txt").is_file():
        raise DataMissing(f"{where}: no test/nshards.txt; expected {LAYOUT}")
    dtype = root / DATASET_TYPE
    if dtype.is_file():
        kind = dtype.read_text(encoding="utf-8").strip().lower()
        if kind not in ("", "classification"):
            raise DataError(
                f"{dtype}: says {kind!r}; format 'wds' reads classification shards "
                "(images with a 'cls' label) only"
            )
    names_file, templates_file = root / CLASSNAMES, root / TEMPLATES
    texts = [p for p in (names_file, templates_file) if p.is_file()]
    splits: dict[str, Split] = {}
    for name in SPLITS:
        folder = root / name
        if (folder / "nshards.txt").is_file():
            splits[name] = _split(name, _shards(folder), texts)
    if len(splits["test"]) == 0:
        raise DataMissing(f"{where}: test/ shards hold no samples; expected {LAYOUT}")
    top = max(int(s.labels.max(initial=-1)) for s in splits.values() if s.labels is not None)
    if names_file.is_file():
        classnames = _text_lines(names_file)
        if len(classnames) != top + 1:
            raise DataError(
                f"{names_file}: {len(classnames)} class names but the largest label in "
                f"the shards is {top} ({top + 1} classes); expected one name per "
                "label, line i = label i"
            )
    elif (spec.options or {}).get("classnames"):
        classnames = [str(i) for i in range(top + 1)]  # the suite's file gives the names
    else:
        raise DataError(
            f"{where}: no {CLASSNAMES}; expected one class name per line (line i = "
            "label i), or a classnames = FILE option in the suite"
        )
    return Dataset(
        spec.id,
        splits,
        classnames=classnames,
        meta={
            "format": "wds",
            "shards": {
                k: len(v.reader.shards)  # type: ignore[union-attr]
                for k, v in splits.items()
            },
        },
    )


def _own_templates(spec) -> tuple[list[str], str] | None:
    """The templates file of a wds root (used unless the suite sets templates or prompts)."""
    path = Path(spec.root) / TEMPLATES
    if not path.is_file():
        return None
    return [t for t in _text_lines(path) if t], str(path)


FORMAT_TEMPLATES["wds"] = _own_templates
