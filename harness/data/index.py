"""A persisted listing of a dataset folder, so that a warm open stats directories, not files.

:func:`open_tree` returns the :class:`~harness.data.files.Tree` of a folder (every image below
it, under the one listing policy of :mod:`harness.data.files`).  The first open walks the
folder and writes the listing to ``<index_dir>/dataset-index/<key>.json``: the relative paths,
each file's size and mtime (``st_mtime_ns``) as listed, and each walked directory's
``st_mtime_ns``.  A later open reuses it when

* the index was written for the same resolved folder, extensions and index version, and
* every recorded directory (links followed, as in the walk) still has its recorded mtime, and
  none of those mtimes is within :data:`RACY_NS` (2 s) of the moment the index was written (a
  directory changed in the same clock tick as the listing could hide a change; such an index is
  rebuilt, as git does for "racily clean" entries).

So a warm open costs one ``stat`` per directory (plus reading the JSON), not one per file.
What this sees: any file or folder added, removed or renamed (each changes its parent
directory's mtime; a replaced link too).  What it does not see: a file whose content is
rewritten in place (same name) -- its directory's mtime does not change.  With
``check_sizes=True`` every file is stat'ed as well and a changed size or mtime rebuilds the
listing (one stat per file, still no directory reads).

The listing's :attr:`IndexedTree.fingerprint` is a SHA-256 over the recorded relative paths,
sizes and mtimes: it does not depend on where the folder is mounted, and it changes when a file
is replaced (new mtime, usually new size).  A listing that cannot be written (read-only cache)
is used anyway, with a log line; an unreadable or foreign index file is rebuilt.

Lists of files
--------------

:func:`open_listed` does the same for formats that take their images from a list (IJB-B/C's
meta files, LFW's ``pairs.txt``, the MAD/PAD CSV lists, the torchvision layouts that list their
files): it returns, per listed file, its ``st_size`` and ``st_mtime_ns`` (links followed) or what
is wrong with it (:func:`harness.data.files.regular_file_problem`'s words: "does not exist",
"cannot be read (...)", "not a regular file (a FIFO)"), and a fingerprint of the whole list.
The first open stats every file and writes ``<index_dir>/dataset-index/list-<key>.npz``, where
``<key>`` hashes the exact sequence of paths (as given, plus the working directory when one is
relative) and the index version; it records each file's size and mtime, the final target of
each file that is a symbolic link, and for every *watched directory* its ``st_dev``,
``st_ino`` and ``st_mtime_ns`` (links followed).  The watched directories are the distinct
parent directories of the listed paths, plus, for a listed file that is a link, the directory
of every hop of the link (each link's own folder and its target's).  A later open of the same
list reuses it when

* every watched directory still has its recorded device, inode and mtime, and none of those
  mtimes is later than :data:`RACY_NS` before the moment the files began to be checked (a
  folder changed while or just before it was checked is not trusted, as for folders), and
* with ``check_sizes=True``, every file still is a regular file of the recorded size and
  mtime (one ``stat`` per file).

So a warm open costs one ``stat`` per watched directory (IJB-C's 469k crops: one or a few),
not one per file.  Only a list whose files were all regular files is written; a list with a
problem is checked file by file on every open (and an index left from before is removed), so
the error a loader reports is exact and current.

What this sees: a listed file added back, removed, renamed, replaced by another file or a link
(any of these changes the directory holding it), a link re-pointed (its folder changes), a
listed folder that is a link re-pointed to another folder (new device/inode).  What it does not
see without ``check_sizes``: a file rewritten in place (same name, same inode) in a directory
that did not otherwise change, whatever its new size and mtime; with ``check_sizes``, only a
rewrite that keeps both the size and the mtime (``st_mtime_ns``) goes unseen.

The list's :attr:`ListedFiles.fingerprint` is a SHA-256 over ``path|size|mtime`` of every file
in list order, the paths as given (as :func:`harness.data.base.item_fingerprint` does per file:
it depends on where the data is mounted when the list names absolute paths).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from harness._io import atomic_write
from harness.data.files import IMAGE_EXTENSIONS, Tree, mode_problem, scan_tree, stat_error_problem

log = logging.getLogger("harness.data")

INDEX_VERSION = 1
LIST_INDEX_VERSION = 1
RACY_NS = 2_000_000_000
SUBDIR = "dataset-index"


def default_index_dir() -> Path:
    """``$HARNESS_CACHE`` or ``~/.cache/tradeoff-bench`` (as the feature cache's default)."""
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "tradeoff-bench"


@dataclass
class IndexedTree(Tree):
    fingerprint: str = ""
    from_index: bool = False


def tree_fingerprint(tree: Tree) -> str:
    h = hashlib.sha256()
    for f, s, m in zip(tree.files, tree.sizes, tree.mtimes):
        h.update(f"{f}|{s}|{m}\0".encode())
    return h.hexdigest()


def _index_path(index_dir: Path, top: str, exts: Sequence[str]) -> Path:
    key = hashlib.sha256(f"{INDEX_VERSION}\0{top}\0{','.join(exts)}".encode()).hexdigest()[:32]
    return index_dir / SUBDIR / f"{key}.json"


def _still_valid(data: dict, top: str, exts: list[str], check_sizes: bool) -> bool:
    if data.get("version") != INDEX_VERSION or data.get("top") != top or data.get("extensions") != exts:
        return False
    built = int(data["built_ns"])
    for rel, mtime in data["dirs"].items():
        if mtime >= built - RACY_NS:
            return False
        try:
            st = os.stat(os.path.join(top, rel) if rel else top)
        except OSError:
            return False
        if st.st_mtime_ns != mtime:
            return False
    if check_sizes:
        for rel, size, mtime in zip(data["files"], data["sizes"], data["mtimes"]):
            try:
                st = os.stat(os.path.join(top, rel))
            except OSError:
                return False
            if st.st_size != size or st.st_mtime_ns != mtime:
                return False
    return True


def _write_atomic(path: Path, dump: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` by :func:`harness._io.atomic_write` (a temporary sibling renamed over it,
    the umask's permissions); a failure (read-only cache) is a log line only."""
    try:
        atomic_write(path, dump, binary=True)
    except OSError as e:
        log.warning("dataset index %s not written (%s); the listing is used uncached", path, e)


def _write(path: Path, data: dict) -> None:
    def dump(f: IO[bytes]) -> None:
        f.write(json.dumps(data, separators=(",", ":")).encode("utf-8"))

    _write_atomic(path, dump)


def open_tree(
    top: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    index_dir: str | os.PathLike | None = None,
    check_sizes: bool = False,
) -> IndexedTree:
    """The listing of ``top``: from the persisted index when still valid, else walked and saved.

    ``index_dir`` is the cache root (default :func:`default_index_dir`); see the module
    docstring for exactly what is checked.
    """
    top_s = os.path.realpath(os.fspath(top))
    exts = [e.lower() for e in extensions]
    path = _index_path(Path(index_dir) if index_dir is not None else default_index_dir(), top_s, exts)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if _still_valid(data, top_s, exts, check_sizes):
            return IndexedTree(
                top=os.fspath(top),
                files=data["files"],
                sizes=data["sizes"],
                mtimes=data["mtimes"],
                dirs=data["dirs"],
                notes=data["notes"],
                fingerprint=data["fingerprint"],
                from_index=True,
            )
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("dataset index %s unreadable (%s); listing %s again", path, e, top_s)
    built = time.time_ns()
    tree = scan_tree(top_s, extensions)
    fp = tree_fingerprint(tree)
    _write(
        path,
        {
            "version": INDEX_VERSION,
            "top": top_s,
            "extensions": exts,
            "built_ns": built,
            "dirs": tree.dirs,
            "files": tree.files,
            "sizes": tree.sizes,
            "mtimes": tree.mtimes,
            "notes": tree.notes,
            "fingerprint": fp,
        },
    )
    return IndexedTree(
        top=os.fspath(top),
        files=tree.files,
        sizes=tree.sizes,
        mtimes=tree.mtimes,
        dirs=tree.dirs,
        notes=tree.notes,
        fingerprint=fp,
    )


# ------------------------------------------------------------------------------ lists of files


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def list_fingerprint(paths: Sequence[str], sizes: Sequence[int], mtimes: Sequence[int]) -> str:
    """SHA-256 over ``path|size|mtime`` of each file in order (the paths as given)."""
    h = hashlib.sha256()
    for p, s, m in zip(paths, sizes, mtimes):
        h.update(_enc(f"{p}|{s}|{m}\0"))
    return h.hexdigest()


@dataclass
class ListedFiles:
    """What :func:`open_listed` found for each listed file, in list order.

    ``sizes`` / ``mtimes`` are ``st_size`` / ``st_mtime_ns`` (links followed), ``-1`` where the
    file could not be stat'ed; ``problems`` maps a list position to what is wrong with that file
    (``regular_file_problem``'s words), empty when every file is a regular file; ``links`` maps
    the position of each file that is a symbolic link to its resolved path.
    """

    paths: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    problems: dict[int, str] = field(default_factory=dict)
    links: dict[int, str] = field(default_factory=dict)
    fingerprint: str = ""
    from_index: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def first_problem(self) -> tuple[int, str] | None:
        """``(position, problem)`` of the first listed file that is not a regular file."""
        if not self.problems:
            return None
        i = min(self.problems)
        return i, self.problems[i]

    def missing(self) -> list[int]:
        """Positions (in list order) of the files that could not be stat'ed at all."""
        return sorted(i for i in self.problems if self.sizes[i] < 0)

    def realpaths(self) -> list[str]:
        """``os.path.realpath`` of every listed path, at one ``realpath`` per distinct folder.

        A file that is not a link resolves to its folder's real path plus its name (the index
        is only reused while no folder changed, so no such file has become a link since).
        """
        memo: dict[str, str] = {}
        out: list[str] = []
        for i, p in enumerate(self.paths):
            link = self.links.get(i)
            if link is not None:
                out.append(link)
                continue
            head, tail = os.path.split(p)
            if tail in ("", ".", ".."):
                out.append(os.path.realpath(p))
                continue
            real = memo.get(head)
            if real is None:
                real = memo[head] = os.path.realpath(head or os.curdir)
            out.append(os.path.join(real, tail))
        return out


def _list_key(paths: Sequence[str]) -> str:
    """SHA-256 of the index version and the paths in order (and the working directory when a
    path is relative, as it is then resolved against it)."""
    joined = "\0".join(paths)
    if os.sep == "/":  # every path absolute: each starts with "/" (counted in C, not per path)
        absolute = joined.startswith("/") and joined.count("\0/") == len(paths) - 1
    else:
        absolute = all(os.path.isabs(p) for p in paths)
    h = hashlib.sha256(f"list-index-v{LIST_INDEX_VERSION}\0".encode())
    if not absolute:
        h.update(_enc(f"cwd={os.getcwd()}\0"))
    h.update(_enc(joined))
    return h.hexdigest()


def _link_dirs(path: str) -> list[str]:
    """The folder of every hop of the link ``path`` (no stat: ``readlink`` only)."""
    out: list[str] = []
    cur = path
    for _ in range(40):  # the kernel's limit on nested links
        try:
            target = os.readlink(cur)
        except OSError:
            break
        cur = os.path.join(os.path.dirname(cur), target)
        out.append(os.path.dirname(cur) or os.curdir)
    return out


def _dir_id(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_mtime_ns]


def _check_listed(paths: list[str]) -> tuple[ListedFiles, dict[str, list[int]] | None]:
    """Stat every listed file (``lstat``, plus ``stat`` for links) and every watched folder.

    Returns the result and the watched folders' ``[dev, ino, mtime_ns]`` (``None`` when one
    cannot be stat'ed: the list is then not persisted).
    """
    sizes = [-1] * len(paths)
    mtimes = [-1] * len(paths)
    problems: dict[int, str] = {}
    links: dict[int, str] = {}
    watched: dict[str, None] = {}
    for i, p in enumerate(paths):
        watched[os.path.dirname(p) or os.curdir] = None
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                for d in _link_dirs(p):
                    watched[d] = None
                st = os.stat(p)
                links[i] = os.path.realpath(p)
        except OSError as e:
            problems[i] = stat_error_problem(e)
            continue
        sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        problem = mode_problem(st.st_mode)
        if problem is not None:
            problems[i] = problem
    dirs: dict[str, list[int]] = {}
    for d in watched:
        ident = _dir_id(d)
        if ident is not None:
            dirs[d] = ident
    s, m = np.asarray(sizes, dtype=np.int64), np.asarray(mtimes, dtype=np.int64)
    listed = ListedFiles(paths, s, m, problems, links, list_fingerprint(paths, sizes, mtimes))
    return listed, (dirs if len(dirs) == len(watched) else None)


def _list_still_valid(
    header: dict, key: str, paths: list[str], sizes: np.ndarray, mtimes: np.ndarray, check_sizes: bool
) -> bool:
    if header.get("version") != LIST_INDEX_VERSION or header.get("key") != key:
        return False
    if header.get("n") != len(paths) or len(sizes) != len(paths) or len(mtimes) != len(paths):
        return False
    built = int(header["built_ns"])
    for d, (dev, ino, mtime) in header["dirs"].items():
        if mtime >= built - RACY_NS:
            return False
        if _dir_id(d) != [dev, ino, mtime]:
            return False
    if check_sizes:
        for p, size, mtime in zip(paths, sizes.tolist(), mtimes.tolist()):
            try:
                st = os.stat(p)
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or st.st_mtime_ns != mtime:
                return False
    return True


def _list_index_path(index_dir: str | os.PathLike | None, key: str) -> Path:
    root = Path(index_dir) if index_dir is not None else default_index_dir()
    return root / SUBDIR / f"list-{key[:32]}.npz"


def open_listed(
    paths: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike | None = None,
    check_sizes: bool = False,
) -> ListedFiles:
    """Size, mtime or problem of each listed file: from the persisted index when still valid.

    ``index_dir`` is the cache root (default :func:`default_index_dir`); the module docstring
    says exactly what is checked on a warm open and what is not seen.
    """
    plist = [os.fspath(p) for p in paths]
    key = _list_key(plist)
    path = _list_index_path(index_dir, key)
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode("utf-8"))
            sizes, mtimes = z["sizes"], z["mtimes"]
        if _list_still_valid(header, key, plist, sizes, mtimes, check_sizes):
            return ListedFiles(
                plist,
                sizes,
                mtimes,
                links={int(i): p for i, p in header["links"].items()},
                fingerprint=header["fingerprint"],
                from_index=True,
            )
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        log.warning(
            "dataset index %s unreadable (%s); checking the %d listed files again", path, e, len(plist)
        )
    built = time.time_ns()
    listed, dirs = _check_listed(plist)
    if listed.problems or dirs is None:
        try:
            os.unlink(path)  # a list with a problem is checked again on every open
        except OSError:
            pass
        return listed
    header = {
        "version": LIST_INDEX_VERSION,
        "key": key,
        "n": len(plist),
        "built_ns": built,
        "dirs": dirs,
        "links": {str(i): p for i, p in listed.links.items()},
        "fingerprint": listed.fingerprint,
    }
    blob = np.frombuffer(json.dumps(header, separators=(",", ":")).encode("utf-8"), dtype=np.uint8)
    _write_atomic(path, lambda f: np.savez(f, header=blob, sizes=listed.sizes, mtimes=listed.mtimes))
    return listed
