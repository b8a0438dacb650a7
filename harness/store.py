"""The on-disk feature store: checksummed entries, resumable chunked writes, visible lock waits.

Layout under the cache folder (``<kind>`` is ``features`` or ``text``)::

    <kind>/<key[:2]>/<key>/manifest.json     the commit point, written last
    <kind>/<key[:2]>/<key>/<name>.npy         one raw .npy per array (x, valid; w)
    <kind>/<key[:2]>/<key>/chunks/c<start>-<stop>.npy|.json
                                              rows [start, stop) of an unfinished split
    <kind>/<key[:2]>/<key>/.lock, .lock.owner the writer's lock and who holds it (pid, host)

- ``manifest.json`` holds, per array, its file, shape, dtype and the sha256 of its bytes, plus
  the entry's metadata, and a sha256 of itself.  An entry is read only when the manifest and
  every array check out (readers memory-map the arrays); anything else is a damaged entry: it
  is removed, reported in one line naming the file, and recomputed.
- Every file is written to a temporary, fsynced, renamed into place, and its folder fsynced
  (:mod:`harness._io`).  Names are deterministic and content is a function of the key, so two
  writers (two processes, or two nodes on a network filesystem without working locks) at worst
  write the same bytes twice: the lock only saves work, correctness never depends on it.
- A split is extracted in chunks of rows; each chunk is committed on its own (data, then a
  self-checksummed record), so a killed run resumes from its completed chunks.  The chunk files
  are removed when the entry is finished.  A later "feature stage" can write chunks of one
  split for several models from one decode pass: ``store.open_writer(key, n_rows)``,
  ``writer.write_chunk(start, x, valid, bad)``, ``writer.finish(meta)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness._io import atomic_path, atomic_write, fsync_dir, sweep_stale_temporaries
from harness.errors import HarnessError

STORE_FORMAT = 2
MANIFEST = "manifest.json"
_CHUNK_RE = re.compile(r"^c(\d{10})-(\d{10})\.json$")


class DamagedEntry(Exception):
    """An entry or chunk that cannot be read completely and consistently."""


class LockTimeout(HarnessError):
    """Waited ``--lock-timeout`` seconds for another process's lock on a cache entry."""


def _sha(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def array_sha256(a: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (memory-mapped arrays are hashed in place)."""
    a = np.ascontiguousarray(a)
    return _sha(a.data.cast("B")) if a.size else _sha(b"")


def _seal(body: dict) -> str:
    text = json.dumps(body, sort_keys=True)
    return json.dumps({"body": body, "sha256": _sha(text.encode())}, sort_keys=True)


def _unseal(path: Path) -> dict:
    """The body of a self-checksummed JSON file; DamagedEntry if it is not intact."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DamagedEntry(f"unreadable ({e.strerror or e})") from None
    try:
        d = json.loads(raw.decode("utf-8"))
        body = d["body"]
        ok = d["sha256"] == _sha(json.dumps(body, sort_keys=True).encode())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise DamagedEntry("not a valid manifest") from None
    if not ok or not isinstance(body, dict):
        raise DamagedEntry("manifest checksum mismatch")
    return body


def _save_npy(path: Path, a: np.ndarray) -> None:
    """A raw .npy (header + C-order bytes), written so a full disk raises ENOSPC (``np.save``'s
    ``tofile`` reports only "N requested and M written")."""
    a = np.ascontiguousarray(a)

    def write(f: Any) -> None:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
        if a.size:
            f.write(a.data.cast("B"))

    atomic_write(path, write, binary=True)


def _load_checked(path: Path, shape: tuple, dtype: str, sha: str, mmap: bool = True) -> np.ndarray:
    """Load one .npy and check shape, dtype and checksum; DamagedEntry otherwise."""
    if not path.is_file():
        raise DamagedEntry(f"member {path.name} missing")
    try:
        if mmap and int(np.prod(shape)) > 0:
            a = np.load(path, mmap_mode="c", allow_pickle=False)
        else:
            a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DamagedEntry(f"{path.name} unreadable ({type(e).__name__}: {e})") from None
    if tuple(a.shape) != tuple(shape) or a.dtype.str != dtype:
        raise DamagedEntry(
            f"{path.name} has shape {tuple(a.shape)} {a.dtype.str}, manifest says {tuple(shape)} {dtype}"
        )
    if array_sha256(a) != sha:
        raise DamagedEntry(f"{path.name} checksum mismatch")
    return a


def _describe(a: np.ndarray, name: str) -> dict:
    return {"file": f"{name}.npy", "shape": list(a.shape), "dtype": a.dtype.str, "sha256": array_sha256(a)}


def _owner_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})


def _notify(message: str) -> None:
    """Show a line to the person at the terminal (pytest captures stderr during a test)."""
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(message + "\n")
            return
    except OSError:
        pass
    print(message, file=sys.stderr, flush=True)


@dataclass
class Chunk:
    start: int
    stop: int
    x: np.ndarray
    valid: np.ndarray
    bad: list[str]


class Store:
    """Entries of arrays under ``root``; see the module docstring for the layout."""

    def __init__(
        self,
        root: str | os.PathLike,
        warn: Callable[[str], None],
        lock_timeout: float = 300.0,
        notify: Callable[[str], None] = _notify,
        wait_report_every: float = 30.0,
    ):
        self.root = Path(root)
        self.warn = warn
        self.lock_timeout = lock_timeout
        self.notify = notify
        self.wait_report_every = wait_report_every
        self.unwritable: str | None = None  # why the folder cannot be written (set on first failure)
        # only the store's own folders: the cache folder may also hold datasets (demo-v1)
        self.swept = [
            p
            for sub in ("features", "text", "fileid", "models")
            for p in sweep_stale_temporaries(self.root / sub)
        ]

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    # -------------------------------------------------------------------------- write errors

    def write_failed(self, e: OSError) -> None:
        """Record a failed write: one warning per cache folder, then writes are skipped."""
        if self.unwritable is None:
            self.unwritable = e.strerror or str(e)
            self.warn(f"features not cached: {self.root}: {self.unwritable}")

    def writable(self) -> bool:
        return self.unwritable is None

    # ----------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold the entry's lock (saves duplicate work; correctness does not depend on it).

        While waiting, a line says who holds it, every ``wait_report_every`` seconds; after
        ``lock_timeout`` seconds :class:`LockTimeout`.  A folder where no lock can be created
        (read-only cache) is used without one.
        """
        from filelock import FileLock, Timeout

        d = self.entry_dir(kind, key)
        path = d / ".lock"
        try:
            d.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path), mode=0o666)
            lock.acquire(timeout=0)
        except Timeout:
            lock = self._wait(lock, path)
        except OSError:
            yield  # cannot even create the lock: read what is there, write nothing durable
            return
        try:
            try:
                atomic_write(d / ".lock.owner", lambda f: f.write(_owner_text()))
            except OSError:
                pass
            yield
        finally:
            lock.release()

    def _holder(self, path: Path) -> str:
        try:
            d = json.loads((path.parent / ".lock.owner").read_text(encoding="utf-8"))
            return f"pid {d['pid']} on {d['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    @staticmethod
    def _progress(d: Path) -> tuple[int, float]:
        """(chunks committed, newest change) of an entry: a holder writing chunks is alive."""
        try:
            records = [p for p in (d / "chunks").iterdir() if p.suffix == ".json"]
        except OSError:
            records = []
        newest = 0.0
        for p in [*records, d / ".lock.owner", d / MANIFEST]:
            with contextlib.suppress(OSError):
                newest = max(newest, p.stat().st_mtime)
        return len(records), newest

    def _wait(self, lock: Any, path: Path) -> Any:
        """Wait for the lock, saying who holds it; give up after ``lock_timeout`` seconds
        without progress from the holder (a holder that keeps committing chunks is waited for)."""
        from filelock import Timeout

        t0 = last = time.monotonic()
        seen = self._progress(path.parent)
        while True:
            now = time.monotonic()
            progress = self._progress(path.parent)
            if progress != seen:
                seen, last = progress, now
            if now - last >= self.lock_timeout:
                raise LockTimeout(
                    f"feature cache: gave up after {now - t0:.0f} s waiting for {path}, "
                    f"held by {self._holder(path)} with no progress for "
                    f"{now - last:.0f} s (--lock-timeout {self.lock_timeout:g}); "
                    f"is another run stuck on this cache?"
                )
            self.notify(
                f"feature cache: waiting for {path}, held by {self._holder(path)} "
                f"({now - t0:.0f} s; {seen[0]} chunk(s) written; --lock-timeout "
                f"{self.lock_timeout:g} s without progress)"
            )
            try:
                lock.acquire(timeout=max(0.05, min(self.wait_report_every, self.lock_timeout - (now - last))))
                return lock
            except Timeout:
                continue

    # --------------------------------------------------------------------- whole entries

    def read(
        self, kind: str, key: str, check: Callable[[dict, dict], None] | None = None
    ) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, meta) of a complete entry; None when absent.  A damaged entry is reported
        (one line naming the file), removed, and None is returned so it is recomputed.
        ``check(arrays, meta)`` may raise DamagedEntry for inconsistencies the caller knows."""
        d = self.entry_dir(kind, key)
        manifest = d / MANIFEST
        try:
            body = _unseal(manifest)
            if body.get("format") != STORE_FORMAT or body.get("key") != key:
                raise DamagedEntry("manifest of another entry or format")
            arrays = {
                name: _load_checked(d / spec["file"], tuple(spec["shape"]), spec["dtype"], spec["sha256"])
                for name, spec in body["arrays"].items()
            }
            meta = body.get("meta", {})
            if check is not None:
                check(arrays, meta)
        except FileNotFoundError:
            return None
        except DamagedEntry as e:
            self.warn(f"feature cache: damaged entry {manifest} ({e}); recomputing")
            self.discard(kind, key, keep_chunks=True)
            return None
        except (KeyError, TypeError, ValueError) as e:
            self.warn(f"feature cache: damaged entry {manifest} (bad manifest field {e}); recomputing")
            self.discard(kind, key, keep_chunks=True)
            return None
        return arrays, meta

    def write(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Write the arrays, then the manifest (the commit point).  Raises OSError."""
        d = self.entry_dir(kind, key)
        specs = {}
        for name, a in arrays.items():
            _save_npy(d / f"{name}.npy", a)
            specs[name] = _describe(a, name)
        self._commit(d, key, specs, meta)

    def _commit(self, d: Path, key: str, specs: dict, meta: dict) -> None:
        body = {"format": STORE_FORMAT, "key": key, "arrays": specs, "meta": meta}
        text = _seal(body)
        atomic_write(d / MANIFEST, lambda f: f.write(text))

    def discard(self, kind: str, key: str, keep_chunks: bool = False) -> None:
        """Remove an entry (manifest first, so no reader sees a half-removed one)."""
        d = self.entry_dir(kind, key)
        with contextlib.suppress(OSError):
            (d / MANIFEST).unlink()
        if not d.is_dir():
            return
        for p in d.iterdir():
            if p.name in (".lock", ".lock.owner") or (keep_chunks and p.name == "chunks"):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    # -------------------------------------------------------------------- chunked entries

    def open_writer(self, key: str, n_rows: int, kind: str = "features") -> ChunkWriter:
        return ChunkWriter(self, kind, key, n_rows)


class ChunkWriter:
    """Rows of one split, committed chunk by chunk; resumable after any kill."""

    def __init__(self, store: Store, kind: str, key: str, n_rows: int):
        self.store = store
        self.kind = kind
        self.key = key
        self.n_rows = n_rows
        self.dir = store.entry_dir(kind, key)
        self.chunk_dir = self.dir / "chunks"

    def completed(self) -> list[Chunk]:
        """The intact chunks already written, non-overlapping, by start.  Damaged ones are
        reported, removed and left for recomputation."""
        if not self.chunk_dir.is_dir():
            return []
        found: list[Chunk] = []
        for p in sorted(self.chunk_dir.iterdir()):
            m = _CHUNK_RE.match(p.name)
            if not m:
                continue
            try:
                found.append(self._read_chunk(p, int(m.group(1)), int(m.group(2))))
            except FileNotFoundError:
                continue
            except (DamagedEntry, KeyError, TypeError, ValueError) as e:
                self.store.warn(f"feature cache: damaged chunk {p} ({e}); recomputing its rows")
                for q in (p, p.with_suffix(".npy")):
                    with contextlib.suppress(OSError):
                        q.unlink()
        found.sort(key=lambda c: (c.start, -c.stop))
        chosen: list[Chunk] = []
        end = 0
        for c in found:
            if c.start >= end:
                chosen.append(c)
                end = c.stop
        return chosen

    def _read_chunk(self, record: Path, start: int, stop: int) -> Chunk:
        body = _unseal(record)
        if (body.get("format"), body.get("key"), body.get("start"), body.get("stop"), body.get("n_rows")) != (
            STORE_FORMAT,
            self.key,
            start,
            stop,
            self.n_rows,
        ):
            raise DamagedEntry("record does not match its name or split")
        if not 0 <= start < stop <= self.n_rows:
            raise DamagedEntry(f"rows {start}-{stop} outside the split's {self.n_rows}")
        spec = body["x"]
        x = _load_checked(
            record.with_suffix(".npy"), tuple(spec["shape"]), spec["dtype"], spec["sha256"], mmap=True
        )
        if x.shape[0] != stop - start:
            raise DamagedEntry(f"{x.shape[0]} rows for {stop - start}")
        valid = np.ones(stop - start, dtype=bool)
        invalid = [int(i) for i in body["invalid"]]
        if any(not 0 <= i < stop - start for i in invalid):
            raise DamagedEntry("invalid-row index out of range")
        valid[invalid] = False
        bad = [str(s) for s in body["bad"]]
        if len(bad) != len(invalid):
            raise DamagedEntry("bad items do not match invalid rows")
        return Chunk(start, stop, x, valid, bad)

    def write_chunk(self, start: int, x: np.ndarray, valid: np.ndarray, bad: list[str]) -> None:
        """Commit rows [start, start + len(x)): data first, then its record.  Raises OSError."""
        stop = start + len(x)
        name = f"c{start:010d}-{stop:010d}"
        x = np.ascontiguousarray(x)
        _save_npy(self.chunk_dir / f"{name}.npy", x)
        body = {
            "format": STORE_FORMAT,
            "key": self.key,
            "start": start,
            "stop": stop,
            "n_rows": self.n_rows,
            "x": _describe(x, name),
            "invalid": [int(i) for i in np.flatnonzero(~np.asarray(valid, bool))],
            "bad": list(bad),
        }
        text = _seal(body)
        atomic_write(self.chunk_dir / f"{name}.json", lambda f: f.write(text))

    def finish(self, meta: dict, x: np.ndarray | None = None, valid: np.ndarray | None = None) -> None:
        """Assemble the entry (x.npy, valid.npy, manifest) and drop the chunks.  Raises OSError.

        With ``x``/``valid`` given (already in memory) they are written as they are; otherwise
        the rows are streamed from the completed chunks, which must cover the split."""
        if x is None or valid is None:
            x, valid = self._assemble_from_chunks()
        else:
            _save_npy(self.dir / "x.npy", x)
        _save_npy(self.dir / "valid.npy", np.asarray(valid, dtype=bool))
        specs = {"x": _describe(x, "x"), "valid": _describe(np.asarray(valid, dtype=bool), "valid")}
        self.store._commit(self.dir, self.key, specs, meta)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.chunk_dir)
            fsync_dir(self.dir)

    def _assemble_from_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        chunks = self.completed()
        covered = sum(c.stop - c.start for c in chunks)
        if covered != self.n_rows:
            raise ValueError(f"chunks cover {covered} of {self.n_rows} rows")
        dim = chunks[0].x.shape[1] if chunks else 0
        dtype = chunks[0].x.dtype if chunks else np.dtype(np.float32)
        valid = np.concatenate([c.valid for c in chunks]) if chunks else np.ones(0, bool)
        if self.n_rows == 0 or dim == 0:
            x = np.zeros((self.n_rows, dim), dtype=dtype)
            _save_npy(self.dir / "x.npy", x)
            return x, valid
        with atomic_path(self.dir / "x.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(self.n_rows, dim))
            for c in chunks:
                out[c.start : c.stop] = c.x
            out.flush()
            del out
        return np.load(self.dir / "x.npy", mmap_mode="r"), valid
