"""What a model's outputs depend on, and the cached description that lets a run skip building it.

- :func:`file_sha256` hashes a weights file (the one place the harness hashes checkpoints);
- :func:`weights_fingerprint` is the identity of a model's weights: file hashes where the suite
  names files, else architecture + pretrained tag;
- a *model description* (the resolved preprocessing and the embedding width) is remembered under
  ``<cache>/models/<key>.json`` the first time a model is built, so a later run whose features are
  all cached never builds the network (:func:`read_description`, :func:`write_description`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.fileid import portable
from harness.models.preprocess import Preprocess
from harness.suite import ModelSpec


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime_ns, inode) in the process and
    on disk under the feature cache (:func:`harness.fileid.memo_sha256`)."""
    from harness import fileid

    return fileid.memo_sha256(path)


# Bump when the way a spec turns into weights changes (2: QuickGELU forced for clip-lora and
# QuickGELU tags), so features cached by an older loader are not reused.
LOADER_VERSION = 2


def weights_fingerprint(spec: ModelSpec) -> str:
    """What the weights depend on: file hashes where there are files, else arch + tag."""
    h = hashlib.sha256()
    h.update(f"loader={LOADER_VERSION}|".encode())
    # where the files are mounted is not part of the identity (stores shared across nodes)
    h.update(
        f"arch={portable(spec.arch)}|pretrained={portable(spec.pretrained)}"
        f"|format={spec.checkpoint_format}".encode()
    )
    h.update(f"|lora={spec.lora}|polarity={spec.score_polarity}".encode())
    files: list[str] = []
    if spec.arch.startswith("local-dir:"):
        d = spec.arch[len("local-dir:") :]
        if os.path.isdir(d):
            files += sorted(os.path.join(d, f) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
    for p in (spec.pretrained, spec.checkpoint, spec.head):
        if p and os.path.isfile(p):
            files.append(p)
    for f in files:
        h.update(f"|{os.path.basename(f)}={file_sha256(f)}".encode())
    return h.hexdigest()[:24]


def _open_clip_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


def description_path(spec: ModelSpec, cache_dir: str | os.PathLike, fingerprint: str) -> Path:
    """Where the description of ``spec`` (weights ``fingerprint``) lives under ``cache_dir``."""
    key = hashlib.sha256(
        f"{fingerprint}|{spec.preprocess}|open_clip={_open_clip_version()}".encode()
    ).hexdigest()[:24]
    return Path(cache_dir) / "models" / f"{key}.json"


def read_description(path: Path) -> tuple[Preprocess, int | None] | None:
    """``(preprocess, embed_dim)`` from a description file; None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        desc = json.loads(path.read_text(encoding="utf-8"))
        pre: dict[str, Any] = dict(desc["preprocess"])
        pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
        return Preprocess(**pre), desc.get("embed_dim")
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable description: the caller builds the model and writes it again


def write_description(path: Path, model_id: str, preprocess: Preprocess, embed_dim: int | None) -> None:
    from harness._io import atomic_write

    text = json.dumps({"model": model_id, "preprocess": asdict(preprocess), "embed_dim": embed_dim})

    def write(f) -> None:
        f.write(text)

    atomic_write(path, write)
