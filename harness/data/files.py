"""Files a dataset is made of: the one image lister, and the checks every opened file passes.

One extension list (:data:`IMAGE_EXTENSIONS`) and one symlink policy serve every folder-shaped
format (``imagefolder``, the torchvision folder layouts, ``mad-folders``) and every listed
image (``list``, ``lfw-pairs``):

* Links are followed, but a directory is walked once: directories are identified by
  ``(st_dev, st_ino)`` of the directory a path resolves to, and a second path to an already
  walked directory (a loop such as ``test/3/loop -> ../3``, or two links to one folder) is not
  walked again.  It is reported once, as a note naming the link and the folder it repeats, so
  counts equal those of the same tree without the link.
* Hidden files and folders (a leading ``.``) are ignored.
* Only regular files are images: an entry whose name looks like an image but that is a FIFO,
  socket or device (after following links) is skipped with a note, and never opened, so a
  loader cannot block on it.  A broken link is skipped with a note too.

Option files (class names, templates) pass :func:`read_option_text`: a regular file of at most
:data:`OPTION_FILE_LIMIT` bytes.  Images are decoded by :func:`decode_image`, which opens a path
without blocking, refuses what is not a regular file and refuses images above
``PIL.Image.MAX_IMAGE_PIXELS`` (set here explicitly, see :data:`MAX_IMAGE_PIXELS`).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from harness.errors import DataError

log = logging.getLogger("harness.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

#: Largest option file (``classnames`` / ``templates``) read, in bytes.
OPTION_FILE_LIMIT = 1_000_000

#: Images with more pixels than this are refused as unreadable (PIL's decompression-bomb limit,
#: set explicitly; PIL's own default is the same 89,478,485 = 1024 * 1024 * 1024 // 4 // 3).
#: ``HARNESS_MAX_IMAGE_PIXELS`` in the environment overrides it.
MAX_IMAGE_PIXELS = int(os.environ.get("HARNESS_MAX_IMAGE_PIXELS", "89478485"))
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class UnreadableImage(Exception):
    """An image that is refused before or while decoding; the message is the reason."""


def is_image(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def kind_of(mode: int) -> str:
    """A file type in words, for messages."""
    for test, word in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return word
    return "not a regular file"


def stat_error_problem(e: OSError) -> str:
    """What a failed ``stat`` of a listed file means, in words (see :func:`regular_file_problem`)."""
    if isinstance(e, FileNotFoundError):
        return "does not exist"
    return f"cannot be read ({e.strerror or e})"


def mode_problem(mode: int) -> str | None:
    """``None`` for a regular file's ``st_mode``, else what is wrong, in words."""
    if not stat.S_ISREG(mode):
        return f"not a regular file ({kind_of(mode)})"
    return None


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """``None`` for an existing regular file (links followed), else what is wrong, in words."""
    try:
        st = os.stat(path)
    except OSError as e:
        return stat_error_problem(e)
    return mode_problem(st.st_mode)


# ---------------------------------------------------------------------------------- listing


@dataclass
class Tree:
    """The listing of one folder: every image below it and every directory walked.

    Paths are relative to the folder, ``/``-separated, sorted.  ``dirs`` maps each walked
    directory (``""`` = the folder itself) to its ``st_mtime_ns``; ``sizes`` / ``mtimes`` are
    the files' ``st_size`` / ``st_mtime_ns`` as listed; ``notes`` the one-line reports (loops,
    skipped non-regular files).
    """

    top: str
    files: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    dirs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def subdirs(self) -> list[str]:
        """Names of the walked directories directly below the top, sorted."""
        return sorted(d for d in self.dirs if d and "/" not in d)


def scan_tree(top: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Tree:
    """Walk ``top`` once under the policy of this module's docstring."""
    top = os.fspath(top)
    tree = Tree(top)
    exts = tuple(e.lower() for e in extensions)
    seen: dict[tuple[int, int], str] = {}
    found: list[tuple[str, int, int]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(top, rel) if rel else top
        try:
            st = os.stat(path)
        except OSError as e:
            tree.notes.append(f"{path}: skipped, cannot be read ({e.strerror or e})")
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            first = os.path.join(top, seen[key]) if seen[key] else top
            note = (
                f"{path}: skipped, a link to the folder {first} that is already listed "
                f"(symlink loop or second link); counted once"
            )
            tree.notes.append(note)
            log.warning("%s", note)
            continue
        seen[key] = rel
        tree.dirs[rel] = st.st_mtime_ns
        subdirs: list[str] = []
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            tree.notes.append(f"{path}: skipped, cannot be listed ({e.strerror or e})")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(child)
                continue
            if not entry.name.lower().endswith(exts):
                continue
            try:
                fst = entry.stat()
            except OSError as err:
                tree.notes.append(f"{entry.path}: skipped, {err.strerror or err} (broken link?)")
                continue
            if not stat.S_ISREG(fst.st_mode):
                tree.notes.append(f"{entry.path}: skipped, not a regular file ({kind_of(fst.st_mode)})")
                continue
            found.append((child, fst.st_size, fst.st_mtime_ns))
        stack.extend(reversed(subdirs))  # depth-first in name order
    found.sort()
    tree.files = [f for f, _, _ in found]
    tree.sizes = [s for _, s, _ in found]
    tree.mtimes = [m for _, _, m in found]
    return tree


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Every image below ``folder`` (absolute-or-as-given paths, sorted), by :func:`scan_tree`."""
    tree = scan_tree(folder, extensions)
    return [os.path.join(tree.top, *f.split("/")) for f in tree.files]


# --------------------------------------------------------------------------------- reading


def open_regular(path: str | os.PathLike, limit: int | None = None, what: str = "file") -> bytes:
    """The bytes of a regular file, opened without blocking; at most ``limit`` bytes.

    Raises :class:`DataError` naming the path for a missing file, anything that is not a
    regular file (a FIFO is never waited on) and a file larger than ``limit``.
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{p}: {what} does not exist") from None
    except OSError as e:
        raise DataError(f"{p}: {what} cannot be opened ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{p}: {what} is not a regular file ({kind_of(st.st_mode)})")
        if limit is not None and st.st_size > limit:
            raise DataError(f"{p}: {what} is {st.st_size:,} bytes, above the limit of {limit:,} bytes")
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise DataError(f"{p}: {what} grew above the limit of {limit:,} bytes while read")
    return data


def read_option_text(path: str | os.PathLike, what: str = "option file") -> str:
    """UTF-8 text of a ``classnames`` / ``templates`` file (regular, <= OPTION_FILE_LIMIT)."""
    data = open_regular(path, OPTION_FILE_LIMIT, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{os.fspath(path)}: {what} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def _open_pil(source: Any, name: str) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise UnreadableImage(
                f"{name}: refused, more pixels than the limit "
                f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} ({e})"
            ) from None
    return img


def decode_image(item: Any) -> Image.Image:
    """Decode one image reference (a path, or encoded bytes / a uint8 array) to RGB PIL.

    A path must be a regular file (checked on the open descriptor; a FIFO is not waited on).
    An image above the pixel limit raises :class:`UnreadableImage` with the reason.
    """
    if isinstance(item, (bytes, bytearray, memoryview)):
        img = _open_pil(io.BytesIO(bytes(item)), "<encoded image>")
    elif isinstance(item, np.ndarray):
        img = _open_pil(io.BytesIO(item.tobytes()), "<encoded image>")
    else:
        path = os.fspath(item)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise UnreadableImage(f"{path}: cannot be opened ({e.strerror or e})") from None
        f = os.fdopen(fd, "rb")
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise UnreadableImage(f"{path}: not a regular file ({kind_of(mode)})")
            img = _open_pil(f, path)
            return img.convert("RGB")
        finally:
            f.close()
    return img.convert("RGB")
