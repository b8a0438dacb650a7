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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.data.files import IMAGE_EXTENSIONS, Tree, scan_tree

log = logging.getLogger("harness.data")

INDEX_VERSION = 1
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


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        log.warning("dataset index %s not written (%s); the listing is used uncached", path, e)


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
