"""The on-disk feature store: checksummed entries, resumable chunked writes, visible lock waits.

Layout under the cache folder (``<kind>`` is ``features`` or ``text``)::

    <kind>/<key[:2]>/<key>/manifest.json     the commit point, written last
    <kind>/<key[:2]>/<key>/<name>.npy         one raw .npy per array (x, valid; w)
    <kind>/<key[:2]>/<key>/chunks/c<start>-<stop>.npy|.json
                                              rows [start, stop) of an unfinished split
    <kind>/<key[:2]>/<key>/chunks/c<start>-<stop>.claim
                                              who is computing those rows (shared extraction)
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
- Several processes can extract one split together (``pytest -n N`` with fewer models than
  workers): a process *claims* a chunk before decoding it, ``chunks/c<start>-<stop>.claim``,
  created atomically (a hard link of a finished temporary, else ``O_CREAT|O_EXCL``) and holding
  the claimant's pid, host and process start time.  It commits the chunk as above and removes
  the claim; while it works it touches the claim (a heartbeat).  A claim whose holder is dead
  (same host: the pid is gone, or was reused -- its start time differs) or that has not been
  touched for ``lock_timeout`` seconds is stale: the next claimant takes it over (renamed
  aside, checked to be the very file judged stale, then claimed afresh), and the store's
  sweep removes it when the cache is opened.  Claims only save work, like the lock: two
  processes that compute the same chunk write the same bytes.  Whoever finds every chunk
  committed finalises the entry under the entry's lock, once (:meth:`ChunkWriter.finish_shared`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness._io import (
    TMP_SUFFIX,
    _host,
    _pid_alive,
    atomic_path,
    atomic_write,
    fsync_dir,
    shared_mode,
    sweep_stale_temporaries,
)
from harness.errors import HarnessError

STORE_FORMAT = 2
MANIFEST = "manifest.json"
CLAIM_SUFFIX = ".claim"
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


# ------------------------------------------------------------------------------ chunk claims


def chunk_name(start: int, stop: int) -> str:
    return f"c{start:010d}-{stop:010d}"


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: field 22 of ``/proc/<pid>/stat``, clock ticks since
    boot, plus the boot id), to tell a live claimant from a later process given the same pid;
    None where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        ticks = text[text.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None
    return f"{_boot_id()}:{ticks}"


@dataclass
class ClaimInfo:
    """What a claim file says (``pid``/``host`` None when unreadable) and its last heartbeat."""

    path: Path
    pid: int | None
    host: str | None
    started: str | None
    touched: float  # mtime
    ino: int

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process"
        return f"pid {self.pid} on {self.host}"

    def stale(self, timeout: float, now: float | None = None) -> bool:
        """Dead holder (this host: pid gone or reused) or no heartbeat for ``timeout`` s."""
        if (now if now is not None else time.time()) - self.touched > timeout:
            return True
        if self.pid is None or self.host != socket.gethostname():
            return False  # another host's live claim: only its age tells
        if self.pid == os.getpid():
            return self.path not in _HELD  # ours, but not held: left by an aborted pass
        if not _pid_alive(self.pid):
            return True
        now_started = process_start(self.pid)
        return self.started is not None and now_started is not None and now_started != self.started


def read_claim(path: Path) -> ClaimInfo:
    """The claim at ``path``; FileNotFoundError when there is none.  A claim being written (empty)
    or damaged reads as an unknown holder: stale only by its age."""
    st = path.stat()
    pid = host = started = None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        pid, host, started = int(d["pid"]), str(d["host"]), d.get("started")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ClaimInfo(path, pid, host, None if started is None else str(started), st.st_mtime, st.st_ino)


def _claim_text() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": process_start(os.getpid()),
            "since": time.time(),
        }
    )


def _create_claim(path: Path) -> int:
    """Create the claim file atomically, complete; its inode.  FileExistsError when it exists."""
    text = _claim_text().encode()
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent
    )
    try:
        os.fchmod(fd, shared_mode())
        os.write(fd, text)
        os.close(fd)
        fd = -1
        try:
            os.link(name, path)  # atomic, with its content: a reader never sees it half-written
            return os.stat(path).st_ino
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links
            pass
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.write(fd, text)
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


_HELD: set[Path] = set()  # the claims this process holds (a claim of ours not in it is a leftover)


class Claim:
    """This process's claim on one chunk: touch it while working, release it when done."""

    def __init__(self, path: Path, ino: int):
        self.path = path
        self.ino = ino
        self.touched = time.monotonic()
        _HELD.add(path)

    def _ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.ino
        except OSError:
            return False

    def touch(self) -> None:
        self.touched = time.monotonic()
        if self._ours():
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        _HELD.discard(self.path)
        if self._ours():
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _take_over(info: ClaimInfo) -> bool:
    """Remove the stale claim ``info`` judged, and only that one: it is renamed aside and, if
    another process replaced it meanwhile (another inode), put back.  True when removed."""
    aside = info.path.with_name(
        f".{info.path.name}.{_host()}.{os.getpid()}.{os.urandom(4).hex()}{TMP_SUFFIX}"
    )
    try:
        os.rename(info.path, aside)
    except FileNotFoundError:
        return True  # gone already: claimable
    except OSError:
        return False  # not ours to remove (permissions): wait for it
    try:
        if os.stat(aside).st_ino != info.ino:  # a fresh claim replaced the stale one: restore it
            with contextlib.suppress(OSError):
                os.link(aside, info.path)
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(aside)


def sweep_stale_claims(root: Path, timeout: float) -> list[Path]:
    """Remove the stale claims under ``root`` (``<kind>/<k[:2]>/<k>/chunks/*.claim``) and the
    chunk folders of finished entries that no live claim is writing into; what was removed."""
    removed: list[Path] = []
    now = time.time()
    for chunks in root.glob("*/*/chunks"):
        live = False
        try:
            names = [p for p in chunks.iterdir() if p.name.endswith(CLAIM_SUFFIX)]
        except OSError:
            continue
        for p in names:
            try:
                info = read_claim(p)
            except OSError:
                continue
            if info.stale(timeout, now) and _take_over(info):
                removed.append(p)
            else:
                live = True
        if not live and (chunks.parent / MANIFEST).is_file():  # leftovers of a duplicate writer
            with contextlib.suppress(OSError):
                shutil.rmtree(chunks)
                removed.append(chunks)
    return removed


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
        if (self.root / "features").is_dir():
            self.swept += sweep_stale_claims(self.root / "features", lock_timeout)

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
    def lock(self, kind: str, key: str, quiet: float = 0.0) -> Iterator[None]:
        """Hold the entry's lock (saves duplicate work; correctness does not depend on it).

        While waiting, a line says who holds it, every ``wait_report_every`` seconds (none
        during the first ``quiet`` seconds: a short, expected wait); after ``lock_timeout``
        seconds :class:`LockTimeout`.  A folder where no lock can be created (read-only cache)
        is used without one.
        """
        from filelock import FileLock, Timeout

        d = self.entry_dir(kind, key)
        path = d / ".lock"
        try:
            d.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path), mode=0o666)
            lock.acquire(timeout=0)
        except Timeout:
            lock = self._wait(lock, path, quiet)
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

    def _wait(self, lock: Any, path: Path, quiet: float = 0.0) -> Any:
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
            step = self.wait_report_every
            if now - t0 >= quiet:
                self.notify(
                    f"feature cache: waiting for {path}, held by {self._holder(path)} "
                    f"({now - t0:.0f} s; {seen[0]} chunk(s) written; --lock-timeout "
                    f"{self.lock_timeout:g} s without progress)"
                )
            else:
                step = min(step, quiet - (now - t0))
            try:
                lock.acquire(timeout=max(0.05, min(step, self.lock_timeout - (now - last))))
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

    def discard(
        self, kind: str, key: str, keep_chunks: bool = False, older_than: float | None = None
    ) -> None:
        """Remove an entry (manifest first, so no reader sees a half-removed one).

        ``older_than`` (a time.time()): remove only what was written before it -- an entry or
        chunks that processes of this same run (``--refresh-features`` under ``-n N``) have
        already recomputed stay; claims are never removed here."""
        d = self.entry_dir(kind, key)

        def old(p: Path) -> bool:
            if older_than is None:
                return True
            try:
                return p.stat().st_mtime < older_than
            except OSError:
                return False

        if old(d / MANIFEST):
            with contextlib.suppress(OSError):
                (d / MANIFEST).unlink()
        elif (d / MANIFEST).exists():
            return  # finished during this run
        if not d.is_dir():
            return
        for p in d.iterdir():
            if p.name in (".lock", ".lock.owner") or (keep_chunks and p.name == "chunks"):
                continue
            if p.name == "chunks" and older_than is not None:
                for q in p.iterdir() if p.is_dir() else []:
                    if not q.name.endswith(CLAIM_SUFFIX) and old(q):
                        with contextlib.suppress(OSError):
                            q.unlink()
                continue
            if old(p):
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
        self.assembled_bad: list[str] = []  # unreadable items of the chunks last assembled

    def completed(self, only: set[tuple[int, int]] | None = None) -> list[Chunk]:
        """The intact chunks already written, non-overlapping, by start (``only``: just these
        (start, stop)).  Damaged ones are reported, removed and left for recomputation."""
        if not self.chunk_dir.is_dir():
            return []
        found: list[Chunk] = []
        try:
            names = sorted(self.chunk_dir.iterdir())
        except FileNotFoundError:  # finished and removed meanwhile (shared extraction)
            return []
        for p in names:
            m = _CHUNK_RE.match(p.name)
            if not m or (only is not None and (int(m.group(1)), int(m.group(2))) not in only):
                continue
            try:
                found.append(self._read_chunk(p, int(m.group(1)), int(m.group(2))))
            except FileNotFoundError:
                continue
            except (DamagedEntry, KeyError, TypeError, ValueError) as e:
                if not p.exists() or self.is_finished():
                    continue  # removed by a process that finished the entry meanwhile
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
            meta = {"bad_items": self.assembled_bad, **meta}
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
        if any(c.x.shape[1] != dim for c in chunks):
            raise ValueError("chunks of different widths")
        dtype = chunks[0].x.dtype if chunks else np.dtype(np.float32)
        valid = np.concatenate([c.valid for c in chunks]) if chunks else np.ones(0, bool)
        self.assembled_bad = [b for c in chunks for b in c.bad]
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

    # ------------------------------------------------------------- shared extraction

    def record(self, start: int, stop: int) -> Path:
        return self.chunk_dir / f"{chunk_name(start, stop)}.json"

    def claim_path(self, start: int, stop: int) -> Path:
        return self.chunk_dir / f"{chunk_name(start, stop)}{CLAIM_SUFFIX}"

    def committed(self, start: int, stop: int) -> bool:
        """Whether rows [start, stop) have a chunk record (checked when read, not here)."""
        return self.record(start, stop).exists()

    def listing(self) -> tuple[set[str], dict[str, Path]]:
        """(names of committed chunk records, claim files by chunk name) in one directory read."""
        records: set[str] = set()
        claims: dict[str, Path] = {}
        try:
            entries = list(os.scandir(self.chunk_dir))
        except OSError:
            return records, claims
        for e in entries:
            if e.name.endswith(".json") and _CHUNK_RE.match(e.name):
                records.add(e.name[: -len(".json")])
            elif e.name.endswith(CLAIM_SUFFIX):
                claims[e.name[: -len(CLAIM_SUFFIX)]] = Path(e.path)
        return records, claims

    def is_finished(self) -> bool:
        """A manifest of this entry is in place (cheap: the arrays are checked when read)."""
        try:
            body = _unseal(self.dir / MANIFEST)
        except (OSError, DamagedEntry):
            return False
        return body.get("format") == STORE_FORMAT and body.get("key") == self.key

    def claim(self, start: int, stop: int) -> Claim | None:
        """Claim rows [start, stop) for this process: a :class:`Claim`, or None when they are
        committed already or another live process holds them.  A stale claim (dead holder, or
        no heartbeat for the store's ``lock_timeout``) is taken over.  Raises OSError when no
        claim can be written (the caller then works alone)."""
        path = self.claim_path(start, stop)
        for _ in range(4):
            if self.committed(start, stop):
                return None
            try:
                info: ClaimInfo | None = read_claim(path)
            except FileNotFoundError:
                info = None
            if info is not None and (not info.stale(self.store.lock_timeout) or not _take_over(info)):
                return None
            try:
                claim = Claim(path, _create_claim(path))
            except FileExistsError:
                continue  # another process was quicker: look at its claim
            if self.committed(start, stop):  # committed (and released) just before we claimed
                claim.release()
                return None
            return claim
        return None

    def holder(self, start: int, stop: int) -> ClaimInfo | None:
        try:
            return read_claim(self.claim_path(start, stop))
        except OSError:
            return None

    def finish_shared(self, meta: dict, x: np.ndarray | None = None, valid: np.ndarray | None = None) -> bool:
        """Finalise the entry once among processes: under the entry's lock, unless a manifest
        is already in place.  True when this call wrote it.  Raises OSError (and ValueError when
        ``x`` is not given and the chunks do not cover the split)."""
        if self.is_finished():
            return False
        with self.store.lock(self.kind, self.key, quiet=30.0):  # another finisher: seconds
            if self.is_finished():
                return False
            self.finish(meta, x, valid)
            return True
