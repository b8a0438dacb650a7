"""Durable atomic file writes and the sweep of temporaries that a killed writer left behind.

``atomic_write`` writes a temporary sibling, fsyncs it, renames it over the target and fsyncs
the folder, so after a crash or power loss a reader sees the old file or the new one, never a
torn one.  The temporary's name carries the writer's host and pid
(``.<name>.<host>.<pid>.<random>.tmp``) so :func:`sweep_stale_temporaries` can tell an orphan
(its writer is dead) from a file that is still being written.  Files get the permissions the
umask allows (``mkstemp`` alone would give 0600), so a group can share a cache.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TMP_SUFFIX = ".tmp"
# a temporary of another host (which we cannot ask about its pid) is stale after this long
STALE_FOREIGN_SECONDS = 6 * 3600.0


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("/", "_") or "host"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shared_mode(mode: int = 0o666) -> int:
    """``mode`` as the umask allows it (what ``open`` would have given)."""
    return mode & ~_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is fsynced and renamed over
    ``path`` (then the folder is fsynced); on error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent
    )
    tmp = Path(name)
    try:
        os.fchmod(fd, shared_mode())
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary sibling of ``path`` and rename it over ``path``.

    Readers see the old file or the new one, never a half-written one; on error the temporary
    file is removed and the old file stays.  The data is fsynced before the rename and the
    folder after it.
    """
    kwargs: dict = {} if binary else {"encoding": "utf-8"}
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w", **kwargs) as f:
        write(f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def tmp_is_stale(path: Path, now: float | None = None, foreign_after: float = STALE_FOREIGN_SECONDS) -> bool:
    """True when the temporary ``path`` belongs to a writer that can no longer finish it.

    Ours (this host): its pid is dead.  Another host's, or a name we cannot parse: older than
    ``foreign_after`` seconds (no writer takes that long between two writes of one file).
    """
    name = path.name
    parts = name[: -len(TMP_SUFFIX)].split(".") if name.endswith(TMP_SUFFIX) else []
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except OSError:
        return False
    if len(parts) >= 4 and parts[-3] == _host():
        try:
            pid = int(parts[-2])
        except ValueError:
            return age > foreign_after
        return not _pid_alive(pid) or age > foreign_after  # (a reused pid: the age decides)
    return age > foreign_after


def sweep_stale_temporaries(
    root: str | os.PathLike, foreign_after: float = STALE_FOREIGN_SECONDS
) -> list[Path]:
    """Delete the orphaned ``*.tmp`` files under ``root``; return what was removed."""
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    now = time.time()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(TMP_SUFFIX):
                continue
            p = Path(dirpath) / name
            if tmp_is_stale(p, now, foreign_after):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed
