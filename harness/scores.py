"""Raw scores of a score-producing case (verification, ijb, mad, pad) and their files.

A benchmark function hands them to ``case.record(metrics, scores=ScoreSet(...), **details)``;
the fixtures compute the case's intervals from them and write them to
``<results dir>/scores/<protocol>/<model>--<dataset>.npz`` (with ``--save-scores``) or to a
temporary folder under the results dir that the session deletes after drawing the curves.

File layout (``numpy.load`` without pickle): ``scores`` float64 (higher = genuine / bona fide),
``labels`` int8 (1 = genuine / bona fide) and, for per-image protocols (mad, pad), ``paths``
(str, relative to the dataset root), ``attack_types`` (str, empty for bona fide) and, where
the dataset has them, ``video_ids`` (str).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCORES_DIR = "scores"
TMP_SCORES_DIR = ".scores-tmp"


@dataclass
class ScoreSet:
    scores: np.ndarray
    labels: np.ndarray
    paths: np.ndarray | None = None
    attack_types: np.ndarray | None = None
    video_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        lab = np.asarray(self.labels)
        if lab.dtype == bool:
            lab = lab.astype(np.int8)
        if lab.shape != self.scores.shape:
            raise ValueError(f"ScoreSet: {len(self.scores)} scores but labels of shape {lab.shape}")
        if lab.size and not np.all((lab == 0) | (lab == 1)):
            raise ValueError("ScoreSet: labels must be 0/1 (1 = genuine / bona fide)")
        self.labels = lab.astype(np.int8)
        for name in ("paths", "attack_types", "video_ids"):
            v = getattr(self, name)
            if v is None:
                continue
            a = np.asarray([("" if x is None else str(x)) for x in np.asarray(v, dtype=object)], dtype=str)
            if a.shape != self.scores.shape:
                raise ValueError(f"ScoreSet: {len(self.scores)} scores but {name} of shape {a.shape}")
            setattr(self, name, a)
        if self.attack_types is not None:  # bona fide rows carry no attack type
            self.attack_types = np.where(self.labels == 1, "", self.attack_types)

    def __len__(self) -> int:
        return len(self.scores)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"scores": self.scores, "labels": self.labels}
        for name in ("paths", "attack_types", "video_ids"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out


_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def score_file(root: str | os.PathLike, protocol: str, model: str, dataset: str) -> Path:
    """``root/<protocol>/<model>--<dataset>.npz`` (characters unsafe in file names -> ``_``)."""
    return Path(root) / _SAFE.sub("_", protocol) / f"{_SAFE.sub('_', model)}--{_SAFE.sub('_', dataset)}.npz"


def save_scores(path: str | os.PathLike, s: ScoreSet) -> Path:
    from harness._io import atomic_write

    buf = io.BytesIO()
    np.savez(buf, **s.arrays())  # type: ignore[arg-type]

    def write(f: Any) -> None:
        f.write(buf.getvalue())

    atomic_write(path, write, binary=True)
    return Path(path)


def load_scores(path: str | os.PathLike) -> ScoreSet:
    with np.load(path, allow_pickle=False) as z:
        kw: dict[str, Any] = {
            k: z[k] for k in z.files if k in ("scores", "labels", "paths", "attack_types", "video_ids")
        }
    return ScoreSet(**kw)


def relative_paths(items: Any, root: str | os.PathLike) -> np.ndarray:
    """Item paths relative to the dataset root (``../`` where a list file points outside it;
    a relative item as given; an item that is not a path, e.g. encoded bytes in a pack:
    ``#<index>``)."""
    r = os.path.abspath(os.fspath(root))
    out = []
    for i, it in enumerate(items):
        if isinstance(it, tuple) and it and isinstance(it[0], (str, os.PathLike)):
            it = it[0]
        if not isinstance(it, (str, os.PathLike)):
            out.append(f"#{i}")
            continue
        p = os.fspath(it)
        out.append(os.path.relpath(os.path.abspath(p), r) if os.path.isabs(p) else p)
    return np.asarray(out, dtype=str)
