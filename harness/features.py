"""Batched feature extraction and its content-addressed disk cache.

Features are keyed by a fingerprint of everything they depend on: the model's weights
(file hashes, or architecture + pretrained tag), its preprocessing, the split's file list
(paths, sizes, modification times), the split name and the flip setting.  One pass over the
images per key per run; none when the run is repeated.  Entries are written atomically
(temporary file + rename) under a file lock, so two xdist workers never extract the same entry
twice or read a half-written file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness._io import atomic_write
from harness.errors import DataError

log = logging.getLogger(__name__)

FEATURE_FORMAT = 1  # bump when the stored layout or the extraction semantics change
MAX_UNREADABLE = 0.01  # more than this share of unreadable images fails the case


@dataclass
class Features:
    """Image features of one split: ``x[i]`` belongs to ``split.items[i]``.

    ``valid[i]`` is False where the image could not be decoded (its row is zero);
    ``bad_items`` names those images.  ``seconds`` is the extraction time (0 from cache).
    """

    x: np.ndarray
    labels: np.ndarray | None
    valid: np.ndarray
    bad_items: list[str] = field(default_factory=list)
    seconds: float = 0.0
    from_cache: bool = False
    key: str = ""
    loader: dict = field(default_factory=dict)  # workers and model threads used (extraction)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def skipped(self) -> int:
        return int((~self.valid).sum())

    def dropping_unreadable(self) -> "Features":
        """The same features without the rows of unreadable images (classification, attacks)."""
        if self.valid.all():
            return self
        keep = self.valid
        return Features(self.x[keep], None if self.labels is None else self.labels[keep],
                        self.valid[keep], [], self.seconds, self.from_cache, self.key)

    def require_all_readable(self, what: str) -> None:
        """Pair-based protocols cannot drop an image without shifting every pair: refuse."""
        if not self.valid.all():
            raise DataError(f"{what}: {self.skipped} unreadable image(s), first: "
                            f"{', '.join(self.bad_items[:3])}; pair protocols cannot skip images")


def feature_key(model_fingerprint: str, preprocess_fingerprint: str, split_fingerprint: str,
                split: str, flip: bool) -> str:
    h = hashlib.sha256()
    for part in (f"v{FEATURE_FORMAT}", model_fingerprint, preprocess_fingerprint,
                 split_fingerprint, split, f"flip={bool(flip)}"):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def text_key(model_fingerprint: str, classnames: list[str], templates: list[str]) -> str:
    h = hashlib.sha256()
    h.update(f"text-v{FEATURE_FORMAT}\0{model_fingerprint}\0".encode())
    for c in classnames:
        h.update(c.encode() + b"\1")
    h.update(b"\0")
    for t in templates:
        h.update(str(t).encode() + b"\1")
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------ loading

class _ImageDataset:
    """torch Dataset over a Split: (tensor, index, ok).  Unreadable images give ok=False."""

    def __init__(self, split, transform, size: int):
        self.split = split
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        import torch

        try:
            return self.transform(self.split.load(i)), i, True
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - any decode failure counts as an unreadable image
            return torch.zeros(3, self.size, self.size), i, False


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _num_workers(n_images: int, requested: int | None) -> int:
    """Worker processes when the model is not on the CPU (decoding is then the only CPU work)."""
    if requested is not None:
        return max(0, requested)
    if n_images < 512:
        return 0  # worker start-up costs more than decoding a few hundred small images
    return max(1, min(8, _cpus()))


def plan_cpu_loader(decode_seconds: float, forward_seconds: float, cpus: int) -> tuple[int, int]:
    """(DataLoader workers, model threads) that maximise throughput when decoding and the model
    share ``cpus`` cores.

    ``decode_seconds``: one image decoded + preprocessed on one core; ``forward_seconds``: one
    image through the model with ``cpus`` threads.  With w workers the decoders deliver
    w / decode_seconds images/s and the model, on the remaining cores, about
    (cpus - w) / (cpus * forward_seconds); with no workers the two run in turn,
    1 / (decode_seconds + forward_seconds).  Model threads never spin on cores the workers need
    (idle OpenMP threads busy-wait and halve the decoders' speed).
    """
    best = (0, cpus)
    best_rate = 1.0 / max(decode_seconds + forward_seconds, 1e-12)
    for w in range(1, cpus + 1):
        threads = max(1, cpus - w)
        rate = min(w / max(decode_seconds, 1e-12), threads / max(cpus * forward_seconds, 1e-12))
        if rate > best_rate * 1.05:  # a worker must pay for its start-up
            best, best_rate = (w, threads), rate
    return best


def _probe_costs(model, ds, k: int = 8) -> tuple[float, float]:
    """Measure decode + preprocess (one core) and forward (per image) on the first k images."""
    import torch

    k = min(k, len(ds))
    t0 = time.perf_counter()
    batch = torch.stack([ds[i][0] for i in range(k)])
    decode = (time.perf_counter() - t0) / k
    model.encode_image(batch)  # warm-up
    t0 = time.perf_counter()
    model.encode_image(batch)
    forward = (time.perf_counter() - t0) / k
    return decode, forward


def extract(model, split, flip: bool = False, batch_size: int = 128,
            num_workers: int | None = None, progress: bool = False) -> Features:
    """Run every image of ``split`` through ``model.encode_image`` (flip: f(x) + f(flip x))."""
    import torch
    from torch.utils.data import DataLoader

    pre = model.preprocess
    ds = _ImageDataset(split, pre.transform(), pre.size)
    on_cuda = str(model.device).startswith("cuda")
    threads_before = torch.get_num_threads()
    threads = threads_before
    if num_workers is None and str(model.device) == "cpu" and len(ds) >= 512:
        cpus = _cpus()
        workers, threads = plan_cpu_loader(*_probe_costs(model, ds), cpus)
    else:
        workers = _num_workers(len(ds), num_workers)
        if str(model.device) == "cpu" and workers:
            threads = max(1, _cpus() - workers)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=on_cuda, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    out: np.ndarray | None = None
    valid = np.ones(len(ds), dtype=bool)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ds), unit="img", desc=f"features {model.id}/{split.name}",
                   leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for images, idx, ok in loader:
                if flip:
                    both = torch.cat([images, images.flip(-1)], 0)
                    f = model.encode_image(both)
                    f = f[: len(images)] + f[len(images):]
                else:
                    f = model.encode_image(images)
                f = f.cpu().numpy()
                if out is None:
                    out = np.zeros((len(ds), f.shape[1]), dtype=np.float32)
                idx = idx.numpy()
                out[idx] = f
                valid[idx] = ok.numpy().astype(bool)
                if bar is not None:
                    bar.update(len(idx))
    finally:
        torch.set_num_threads(threads_before)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if out is None:
        out = np.zeros((0, 0), dtype=np.float32)
    out[~valid] = 0.0
    bad = [str(split.items[i]) if isinstance(split.items[i], (str, os.PathLike)) else f"#{i}"
           for i in np.flatnonzero(~valid)]
    return Features(out, split.labels, valid, bad, seconds, False,
                    loader={"workers": workers, "threads": threads})


# -------------------------------------------------------------------------------- cache

def _atomic_save(path: Path, **arrays: Any) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


class FeatureCache:
    """Disk cache of extracted features and text classifiers, plus a small in-process LRU."""

    def __init__(self, root: str | os.PathLike, refresh: bool = False, memory_entries: int = 4):
        self.root = Path(root)
        self.refresh = refresh
        self._refreshed: set[str] = set()
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._memory_entries = memory_entries
        self.extractions = 0  # how many times images went through a network (tests read it)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def _remember(self, key: str, value: Any) -> Any:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_entries:
            self._memory.popitem(last=False)
        return value

    def _get(self, kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]):
        """Return the arrays stored under key, computing and storing them when absent."""
        from filelock import FileLock

        if key in self._memory and not (self.refresh and key not in self._refreshed):
            return self._memory[key], True
        path = self._path(kind, key)
        force = self.refresh and key not in self._refreshed
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.exists() and not force:
                try:
                    with np.load(path, allow_pickle=False) as z:
                        arrays = {k: z[k] for k in z.files}
                    return self._remember(key, arrays), True
                except (OSError, ValueError, EOFError) as e:  # a damaged entry: recompute it
                    log.warning("feature cache entry %s unreadable (%s); recomputing", path, e)
            arrays = compute()
            _atomic_save(path, **arrays)
            self._refreshed.add(key)
            return self._remember(key, arrays), False

    def features(self, model, split, flip: bool = False, batch_size: int = 128,
                 num_workers: int | None = None, progress: bool = False) -> Features:
        key = feature_key(model.fingerprint, model.preprocess.fingerprint, split.fingerprint(),
                          split.name, flip)
        result: dict[str, Features] = {}

        def compute() -> dict[str, np.ndarray]:
            self.extractions += 1
            f = extract(model, split, flip, batch_size, num_workers, progress)
            result["f"] = f
            return {"x": f.x, "valid": f.valid, "bad_items": np.array(f.bad_items, dtype=str),
                    "seconds": np.array(f.seconds)}

        arrays, cached = self._get("features", key, compute)
        if "f" in result:
            f = result["f"]
            f.key = key
            return f
        return Features(arrays["x"], split.labels, arrays["valid"].astype(bool),
                        [str(s) for s in arrays["bad_items"]], 0.0, True, key)

    def text_classifier(self, model, classnames: list[str], templates: list,
                        build: Callable[[], np.ndarray]) -> np.ndarray:
        key = text_key(model.fingerprint, classnames, [getattr(t, "__name__", t) for t in templates])
        arrays, _ = self._get("text", key, lambda: {"w": np.asarray(build(), dtype=np.float32)})
        return arrays["w"]


def check_unreadable(features: Features, where: str) -> None:
    """More than 1 % unreadable images fails the case, listing the first few paths."""
    n = len(features)
    if n and features.skipped / n > MAX_UNREADABLE:
        raise DataError(f"{where}: {features.skipped} of {n} images unreadable "
                        f"(> {MAX_UNREADABLE:.0%}); first: {', '.join(features.bad_items[:3])}")
