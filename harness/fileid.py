"""Content hashes of large files (checkpoints), memoised so a warm run does not re-read them.

``memo_sha256(path)`` returns the sha256 of the file's bytes.  The result is remembered per
process and, once a folder is set with :func:`use_folder` (the feature cache does it), on disk
under ``<cache>/fileid/``: one small write-once JSON file per (absolute path, size,
mtime_ns, inode, device).  A file that is rewritten, touched, replaced or moved gets a new
memo key, so a stale hash is never returned.  The hash itself depends only on the content,
never on where the file is mounted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_MEMO: dict[tuple, str] = {}
_FOLDER: Path | None = None
hashed_bytes = 0  # bytes actually read and hashed by this process (tests and perf read it)


def use_folder(folder: str | os.PathLike | None) -> None:
    """Persist memos under ``folder`` (None: this process only)."""
    global _FOLDER
    _FOLDER = Path(folder) if folder is not None else None


def clear_process_memo() -> None:
    _MEMO.clear()


def _key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _memo_file(key: tuple) -> Path | None:
    if _FOLDER is None:
        return None
    name = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:32]
    return _FOLDER / name[:2] / f"{name}.json"


def _read_memo(path: Path, key: tuple) -> str | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = d.get("sha256") if isinstance(d, dict) else None
    if d.get("key") != list(key) or not isinstance(digest, str) or len(digest) != 64:
        return None
    try:
        int(digest, 16)
    except ValueError:
        return None
    return digest


def memo_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file's bytes, memoised by (path, size, mtime_ns, inode)."""
    global hashed_bytes
    path = os.fspath(path)
    key = _key(path)
    if key in _MEMO:
        return _MEMO[key]
    memo = _memo_file(key)
    if memo is not None:
        digest = _read_memo(memo, key)
        if digest is not None:
            _MEMO[key] = digest
            return digest
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            hashed_bytes += len(chunk)
    digest = h.hexdigest()
    if _key(path) != key:  # changed while we read it: do not remember a hash of mixed content
        return digest
    _MEMO[key] = digest
    if memo is not None:
        try:
            from harness._io import atomic_write

            text = json.dumps({"key": list(key), "sha256": digest})
            atomic_write(memo, lambda f: f.write(text))
        except OSError:
            pass  # an unwritable cache only costs the hash again next run
    return digest


def portable(ref: str | None) -> str | None:
    """A weights reference without where it is mounted, for fingerprints whose files are hashed
    separately: ``local-dir:/mnt/a/m`` -> ``local-dir:``, a path to a file -> ``file:<name>``,
    a tag (``openai``) or an architecture name unchanged."""
    if ref is None:
        return None
    if ref.startswith("local-dir:"):
        return "local-dir:"
    if os.sep in ref or (os.altsep and os.altsep in ref) or os.path.isfile(ref):
        return f"file:{os.path.basename(ref)}"
    return ref
