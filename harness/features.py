"""Batched feature extraction and its content-addressed disk cache.

Features are keyed by a fingerprint of everything they depend on: the model's weights
(content hashes of its files, or architecture + pretrained tag), its preprocessing, the split's
content fingerprint, the split name, the flip setting, and the runtime that computes them:
device type, compute dtype (autocast), torch and open_clip versions.  One pass over the images
per key per run; none when the run is repeated.  The store (:mod:`harness.store`) writes each
split in checksummed chunks as extraction proceeds, so a killed run resumes; a damaged entry is
recomputed with a warning (collected in ``FeatureCache.warnings``); a cache that cannot be
written leaves the features in memory with a warning.

``FeatureCache(share=True)`` (xdist workers with fewer models than workers) extracts a split
together with the other processes that need it, chunk by chunk through the store's chunk
claims, instead of one process per entry under the entry's lock (:mod:`harness.share`);
``FeatureCache.help_many`` is a worker's help pass over a split it may never read itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from harness.errors import DataError
from harness.store import ChunkWriter, DamagedEntry, Store, chunk_name, read_claim

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from harness.share import Share

log = logging.getLogger(__name__)

FEATURE_FORMAT = 2  # bump when the stored layout or the extraction semantics change
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

    def dropping_unreadable(self) -> Features:
        """The same features without the rows of unreadable images (classification, attacks)."""
        if self.valid.all():
            return self
        keep = self.valid
        return Features(
            self.x[keep],
            None if self.labels is None else self.labels[keep],
            self.valid[keep],
            [],
            self.seconds,
            self.from_cache,
            self.key,
        )

    def require_all_readable(self, what: str) -> None:
        """Pair-based protocols cannot drop an image without shifting every pair: refuse."""
        if not self.valid.all():
            raise DataError(
                f"{what}: {self.skipped} unreadable image(s), first: "
                f"{', '.join(self.bad_items[:3])}; pair protocols cannot skip images"
            )


@functools.cache
def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def compute_dtype(model) -> str:
    """The dtype the model's forward pass really computes in (what ``--autocast`` changes)."""
    dtype = getattr(model, "compute_dtype", None)
    if dtype is not None:
        return str(dtype).replace("torch.", "")
    if getattr(model, "autocast", False) and str(getattr(model, "device", "cpu")).startswith("cuda"):
        return "bfloat16-autocast"
    return "float32"


def runtime_fingerprint(model) -> str:
    """Device type, compute dtype and library versions: inputs that change the numbers."""
    device = str(getattr(model, "device", "cpu")).split(":")[0]
    return (
        f"device={device}|dtype={compute_dtype(model)}|torch={_version('torch')}"
        f"|open_clip={_version('open_clip_torch')}"
    )


def feature_key(
    model_fingerprint: str,
    preprocess_fingerprint: str,
    split_fingerprint: str,
    split: str,
    flip: bool,
    runtime: str = "",
) -> str:
    h = hashlib.sha256()
    for part in (
        f"v{FEATURE_FORMAT}",
        model_fingerprint,
        preprocess_fingerprint,
        split_fingerprint,
        split,
        f"flip={bool(flip)}",
        runtime,
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def text_key(model_fingerprint: str, classnames: list[str], templates: list[str], runtime: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"text-v{FEATURE_FORMAT}\0{model_fingerprint}\0{runtime}\0".encode())
    for c in classnames:
        h.update(c.encode() + b"\1")
    h.update(b"\0")
    for t in templates:
        h.update(str(t).encode() + b"\1")
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------ loading


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


def _item_name(split, i: int) -> str:
    item = split.items[i]
    return str(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"


def _missing_ranges(n: int, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for a, b in sorted(done):
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < n:
        out.append((pos, n))
    return out


def _chunk_plan(missing: list[tuple[int, int]], chunk_rows: int) -> list[tuple[int, int]]:
    """Missing rows cut on the global grid of ``chunk_rows`` (so a resumed run's chunks and
    batches line up with a clean run's)."""
    chunks = []
    for a, b in missing:
        s = a
        while s < b:
            e = min(b, (s // chunk_rows + 1) * chunk_rows)
            chunks.append((s, e))
            s = e
    return chunks


@dataclass(frozen=True)
class Need:
    """One model's request on a split: ``flip`` fuses f(x) + f(flip x); ``writer`` (optional)
    commits its rows chunk by chunk and supplies the rows an earlier, killed run committed."""

    model: Any
    flip: bool = False
    writer: ChunkWriter | None = None


class _MultiDataset:
    """torch Dataset over a Split: (one tensor per distinct transform, index, ok)."""

    def __init__(self, split, transforms: list, sizes: list[int]):
        self.split = split
        self.transforms = transforms
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        import torch

        try:
            img = self.split.load(i)
            return tuple(t(img) for t in self.transforms), i, True
        except DataError:
            raise
        except Exception:
            return tuple(torch.zeros(3, s, s) for s in self.sizes), i, False


def _preprocess_groups(needs) -> tuple[list, list[int]]:
    """Distinct preprocessings (by fingerprint) and, per need, the index of its own: models
    that share a preprocessing share the resize."""
    order: dict[str, int] = {}
    pres: list = []
    index: list[int] = []
    for n in needs:
        fp = n.model.preprocess.fingerprint
        if fp not in order:
            order[fp] = len(pres)
            pres.append(n.model.preprocess)
        index.append(order[fp])
    return pres, index


def _probe_many(
    needs, ds: _MultiDataset, index: list[int], k: int = 8, batch_size: int = 128, budget: float = 0.25
) -> tuple[float, float]:
    """Per image: decode + every preprocessing on one core (median of ``k`` images), and every
    model's forward with all cores, as :func:`plan_cpu_loader` takes them.

    The forward is timed on one thread and divided by the cores (the plan's own linear model):
    two OpenMP threads on a 2-core machine that something else also uses wait a scheduler tick
    at every barrier, which once made a tiny CLIP look 2,800 times slower (24 ms an image for 8.4 us).  It is timed at the
    extraction's own batch size wherever one such batch costs at most ``budget`` seconds: a
    small model's per-call overhead dominates a batch of ``k``.  Each timing is the faster of
    two calls after a warm-up."""
    import torch

    k = min(k, len(ds))
    samples, took = [], []
    for i in range(k):
        t0 = time.perf_counter()
        samples.append(ds[i][0])
        took.append(time.perf_counter() - t0)
    decode = float(np.median(took))
    forward = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n, j in zip(needs, index):
            small = torch.stack([s[j] for s in samples])
            per = _forward_seconds(n, small)
            if k < batch_size and per * batch_size <= budget:
                full = small.repeat(-(-batch_size // k), 1, 1, 1)[:batch_size]
                per = _forward_seconds(n, full)
            forward += per
    finally:
        torch.set_num_threads(threads)
    return decode, forward / _cpus()


def _forward_seconds(need, batch, rounds: int = 2) -> float:
    """Seconds per image of ``need``'s forward on ``batch`` (a flip runs both halves)."""
    encode_fused(need.model, batch, need.flip)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        encode_fused(need.model, batch, need.flip)
        best = min(best, time.perf_counter() - t0)
    return best / len(batch)


def encode_fused(model, x, flip: bool):
    """``model``'s features of the batch ``x``; with ``flip``, f(x) + f(mirrored x) from one
    forward of both halves."""
    import torch

    if not flip:
        return model.encode_image(x)
    f = model.encode_image(torch.cat([x, x.flip(-1)], 0))
    return f[: len(x)] + f[len(x) :]


def extract(
    model,
    split,
    flip: bool = False,
    batch_size: int = 128,
    num_workers: int | None = None,
    progress: bool = False,
    writer: ChunkWriter | None = None,
    chunk_rows: int = 4096,
    on_write_error: Callable[[OSError], None] | None = None,
) -> Features:
    """Run every image of ``split`` through ``model.encode_image`` (flip: f(x) + f(flip x)).

    With a ``writer`` the rows already committed by an earlier (killed) run are read back
    instead of decoded, each completed chunk of ``chunk_rows`` rows (rounded to whole batches)
    is committed as soon as it is done, and the entry is finished at the end.  A write that
    fails (full disk, read-only folder) goes to ``on_write_error`` and extraction carries on in
    memory.
    """
    return extract_many(
        [Need(model, flip, writer)], split, batch_size, num_workers, progress, chunk_rows, on_write_error
    )[0]


LOADER_TIMEOUT = float(os.environ.get("HARNESS_LOADER_TIMEOUT", "600"))  # seconds per batch


def _watched(loader: Any, batches: list[list[int]], split) -> Any:
    """Iterate ``loader``; a worker that delivers nothing for ``LOADER_TIMEOUT`` seconds (a
    file that blocks a read, a hung network mount) fails with the files of the batch it held.
    ``batches``: the batches in the order the loader delivers them (a lazy sampler appends to
    it as the loader asks for them)."""
    it = iter(loader)
    b = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if "timed out" not in str(e):
                raise
            names = [_item_name(split, i) for i in (batches[b] if b < len(batches) else [])]
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise DataError(
                f"{split.name}: a loader worker delivered nothing for {LOADER_TIMEOUT:g} s "
                f"while reading {shown} (HARNESS_LOADER_TIMEOUT sets the limit)"
            ) from None
        b += 1
        yield batch


class _Rows:
    """Each need's rows of one split: resumed from its writer's committed chunks, filled as
    batches come back, committed chunk by chunk, finished into one entry.  Shared by the
    in-process engine and the Ray engine."""

    def __init__(self, needs: list[Need], split, on_write_error: Callable[[OSError], None] | None):
        n = len(split)
        self.split, self.n, self.on_write_error = split, n, on_write_error
        self.writers = [nd.writer for nd in needs]
        self.outs: list[np.ndarray | None] = [None] * len(needs)
        self.valids = [np.ones(n, dtype=bool) for _ in needs]
        self.lacks = [np.ones(n, dtype=bool) for _ in needs]  # rows this need still needs
        for k, w in enumerate(self.writers):
            for c in w.completed() if w is not None else []:
                out = self._out(k, c.x.shape[1])
                if c.x.shape[1] != out.shape[1]:
                    continue  # a chunk of another width cannot be ours: recompute its rows
                out[c.start : c.stop] = c.x
                self.valids[k][c.start : c.stop] = c.valid
                self.lacks[k][c.start : c.stop] = False
        self.resumed = [int(n - np.count_nonzero(lk)) for lk in self.lacks]

    def _out(self, k: int, dim: int) -> np.ndarray:
        out = self.outs[k]
        if out is None:
            out = self.outs[k] = np.zeros((self.n, dim), dtype=np.float32)
        return out

    def put(self, k: int, idx: np.ndarray, f: np.ndarray, ok: np.ndarray) -> None:
        """Rows ``idx`` of need ``k`` (only those it lacks are taken)."""
        sel = self.lacks[k][idx]
        self._out(k, f.shape[1])[idx[sel]] = f[sel]
        self.valids[k][idx[sel]] = ok[sel]

    def commit(self, k: int, a: int, e: int) -> None:
        """Write rows [a, e) of need ``k`` as one chunk, unless resumed or unwritable."""
        out, w = self.outs[k], self.writers[k]
        if w is None or out is None or not self.lacks[k][a]:
            return
        v = self.valids[k][a:e]
        x = out[a:e].copy()
        x[~v] = 0.0
        try:
            w.write_chunk(a, x, v, [_item_name(self.split, int(i)) for i in a + np.flatnonzero(~v)])
        except OSError as err:
            self.writers[k] = None
            if self.on_write_error is not None:
                self.on_write_error(err)

    def finish(self, seconds: float, loaders: list[dict]) -> list[Features]:
        """Every need's Features; each writer assembles its entry (a failed write is reported)."""
        result = []
        for k, loader in enumerate(loaders):
            out = self.outs[k]
            if out is None:
                out = np.zeros((self.n, 0) if self.n else (0, 0), dtype=np.float32)
            valid = self.valids[k]
            out[~valid] = 0.0
            bad = [_item_name(self.split, int(i)) for i in np.flatnonzero(~valid)]
            w = self.writers[k]
            if w is not None:
                try:
                    w.finish({"bad_items": bad, "seconds": seconds, "n_rows": self.n}, out, valid)
                except OSError as err:
                    if self.on_write_error is not None:
                        self.on_write_error(err)
            result.append(
                Features(
                    out,
                    self.split.labels,
                    valid,
                    bad,
                    seconds,
                    False,
                    loader={**loader, "resumed_rows": self.resumed[k]},
                )
            )
        return result


def grid_rows(chunk_rows: int, batch_size: int) -> int:
    """Rows per chunk of the global grid: ``chunk_rows`` rounded down to whole batches (at least
    one batch), so that every batch starts at a multiple of ``batch_size`` however a split's
    chunks are divided among runs or processes."""
    return max(batch_size, (max(chunk_rows, 1) // batch_size) * batch_size)


def _loader_plan(
    needs: list[Need],
    ds: _MultiDataset,
    index: list[int],
    todo: int,
    num_workers: int | None,
    batch_size: int,
):
    """(DataLoader workers, model threads, pin memory) for ``todo`` rows of these needs."""
    import torch

    devices = {str(nd.model.device) for nd in needs}
    on_cpu = devices == {"cpu"}
    on_cuda = any(d.startswith("cuda") for d in devices)
    threads = torch.get_num_threads()
    if not todo:
        workers = 0
    elif num_workers is None and on_cpu and todo >= 512:
        workers, threads = plan_cpu_loader(*_probe_many(needs, ds, index, batch_size=batch_size), _cpus())
    else:
        workers = _num_workers(todo, num_workers)
        if on_cpu and workers:
            threads = max(1, _cpus() - workers)
    return workers, threads, on_cuda


def _loader(ds: _MultiDataset, sampler: Any, workers: int, on_cuda: bool, prefetch: int = 4) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(
        cast("Dataset[Any]", ds),  # a map-style dataset (__len__, __getitem__)
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=on_cuda,
        persistent_workers=False,
        prefetch_factor=prefetch if workers else None,
        timeout=LOADER_TIMEOUT if workers else 0,
    )


def _encode(nd: Need, x: Any) -> np.ndarray:
    """One batch through one need's model (flip: f(x) + f(flip x)), as float32 on the host."""
    return encode_fused(nd.model, x, nd.flip).float().cpu().numpy()


def _bar(progress: bool, todo: int, needs: list[Need], split, initial: int) -> Any:
    if not (progress and todo):
        return None
    from tqdm import tqdm

    names = ",".join(dict.fromkeys(str(nd.model.id) for nd in needs))
    return tqdm(
        total=len(split),
        initial=initial,
        unit="img",
        desc=f"features {names}/{split.name}",
        leave=False,
        dynamic_ncols=True,
        **_tqdm_kwargs(),
    )


def extract_many(
    needs: list[Need],
    split,
    batch_size: int = 128,
    num_workers: int | None = None,
    progress: bool = False,
    chunk_rows: int = 4096,
    on_write_error: Callable[[OSError], None] | None = None,
    share: Share | None = None,
) -> list[Features]:
    """Features of ``split`` for every need, from ONE pass over its images.

    Each image is decoded once, each distinct preprocessing applied once, and every model run on
    its own tensor: each need's features are bit-identical to extracting it alone (same
    transform, same batches on the same grid).  Rows a need's writer already holds are read back,
    not recomputed; the images decoded are the rows some need still lacks.

    ``share``: the split is extracted together with other processes, chunk by chunk
    (:class:`Share`); every need must then have a writer (else the split is extracted here
    alone, as without ``share``)."""
    import torch

    n = len(split)
    if not needs:
        return []
    if share is not None and all(nd.writer is not None for nd in needs):
        from harness.share import SharedPass

        return SharedPass(
            needs, split, batch_size, num_workers, progress, chunk_rows, on_write_error, share
        ).run()
    K = len(needs)
    rows_ = _Rows(needs, split, on_write_error)
    lacks = rows_.lacks
    rows = grid_rows(chunk_rows, batch_size)
    plan = _chunk_plan(_missing_ranges(n, _ranges(~np.any(np.stack(lacks), axis=0))), rows)
    batches = [list(range(s, min(s + batch_size, e))) for a, e in plan for s in range(a, e, batch_size)]

    pres, index = _preprocess_groups(needs)
    ds = _MultiDataset(split, [p.transform() for p in pres], [p.size for p in pres])
    threads_before = torch.get_num_threads()
    todo = sum(len(b) for b in batches)
    workers, threads, on_cuda = _loader_plan(needs, ds, index, todo, num_workers, batch_size)
    bar = _bar(progress, todo, needs, split, min(rows_.resumed))

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    try:
        if batches:
            ci = 0
            with torch.inference_mode():
                for images, idx, ok in _watched(_loader(ds, batches, workers, on_cuda), batches, split):
                    idx = idx.numpy()
                    okb = ok.numpy().astype(bool)
                    for k, (nd, j) in enumerate(zip(needs, index)):
                        if not lacks[k][idx[0]]:
                            continue  # this need's chunk was resumed from the store
                        rows_.put(k, idx, _encode(nd, images[j]), okb)
                    if bar is not None:
                        bar.update(len(idx))
                    while ci < len(plan) and idx[-1] + 1 >= plan[ci][1]:
                        for k in range(K):
                            rows_.commit(k, *plan[ci])
                        ci += 1
    finally:
        torch.set_num_threads(threads_before)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    loader = {
        "workers": workers,
        "threads": threads,
        "decoded_rows": todo,
        "shared_models": K,
        "distinct_preprocessing": len(pres),
    }
    return rows_.finish(seconds, [loader] * K)


def _ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in ``mask`` as (start, stop)."""
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.flatnonzero(np.diff(m))
    return [(int(a), int(b)) for a, b in zip(d[0::2], d[1::2])]


def _tqdm_kwargs() -> dict:
    """Progress bars that stay readable without a TTY: rare updates, no carriage-return spam."""
    import sys

    if sys.stderr.isatty():
        return {}
    return {"mininterval": 30.0, "ascii": True}


# -------------------------------------------------------------------------------- cache


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Features):
        return int(value.x.nbytes + value.valid.nbytes)
    return 0


class FeatureCache:
    """Disk cache of extracted features and text classifiers, plus an in-process LRU bounded in
    bytes (``memory_bytes``).

    ``warnings``: one line per event the user must see (a damaged entry recomputed, a cache that
    could not be written, a lock waited on); the plugin shows them in the summary and report.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        refresh: bool = False,
        memory_bytes: int = 2 << 30,
        lock_timeout: float = 300.0,
        chunk_rows: int = 4096,
        memory_entries: int | None = None,
        share: bool = False,
        refresh_before: float | None = None,
    ):
        from harness import fileid

        self.root = Path(root)
        self.refresh = refresh
        # extract together with other processes, chunk by chunk (Share), instead of one process
        # per entry under its lock; with refresh, what was written before refresh_before is stale
        self.share = share
        self.refresh_before = refresh_before if refresh_before is not None else time.time()
        self.decoded_rows = 0  # images this process decoded (all extractions)
        self.warnings: list[str] = []
        self._refreshed: set[str] = set()
        self._memory: OrderedDict[str, Any] = OrderedDict()
        self._memory_bytes = memory_bytes
        self._memory_used = 0
        self._memory_sizes: dict[str, int] = {}
        self.chunk_rows = chunk_rows
        self.extractions = 0  # how many times images went through a network (tests read it)
        self.store = Store(self.root, self._warn, lock_timeout=lock_timeout)
        fileid.use_folder(self.root / "fileid")

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)

    def _remember(self, key: str, value: Any) -> Any:
        size = _nbytes(value)
        if key in self._memory:
            self._memory_used -= self._memory_sizes.pop(key, 0)
            del self._memory[key]
        if size > self._memory_bytes:
            return value  # larger than the whole budget: not kept
        self._memory[key] = value
        self._memory_sizes[key] = size
        self._memory_used += size
        while self._memory_used > self._memory_bytes:
            old, _ = self._memory.popitem(last=False)
            self._memory_used -= self._memory_sizes.pop(old, 0)
        return value

    def _forced(self, key: str) -> bool:
        return self.refresh and key not in self._refreshed

    def key(self, model, split, flip: bool) -> str:
        return feature_key(
            model.fingerprint,
            model.preprocess.fingerprint,
            split.fingerprint(),
            split.name,
            flip,
            runtime_fingerprint(model),
        )

    def _read(self, key: str, split) -> Features | None:
        """The entry under ``key`` from memory or disk (None when absent, damaged or forced)."""
        if self._forced(key):
            return None
        if key in self._memory:
            self._memory.move_to_end(key)
            f = self._memory[key]
            return Features(f.x, split.labels, f.valid, list(f.bad_items), 0.0, True, key)
        n = len(split)

        def check(arrays: dict, meta: dict) -> None:
            x, v = arrays["x"], arrays["valid"]
            if x.ndim != 2 or len(x) != n or len(v) != n:
                raise DamagedEntry(f"{len(x)} feature rows / {len(v)} flags for {n} images")
            if len(meta.get("bad_items", [])) != int((~v.astype(bool)).sum()):
                raise DamagedEntry("unreadable-image list does not match the flags")

        got = self.store.read("features", key, check)
        if got is None:
            return None
        arrays, meta = got
        f = Features(
            arrays["x"],
            split.labels,
            np.asarray(arrays["valid"], dtype=bool),
            [str(s) for s in meta.get("bad_items", [])],
            0.0,
            True,
            key,
        )
        self._remember(key, f)
        return f

    def ready(self, model, split, flip: bool = False) -> bool:
        """Whether a finished entry is in place (its manifest only: a cheap look for the help
        pass; the arrays are checked when read)."""
        key = self.key(model, split, flip)
        if self._forced(key):
            return False
        return key in self._memory or self.store.open_writer(key, len(split)).is_finished()

    def claimable(self, model, split, flip: bool = False, batch_size: int = 128) -> bool:
        """Whether some chunk of the split is neither committed nor claimed by a live process
        (a help pass builds no model for a split that others have entirely in hand)."""
        key = self.key(model, split, flip)
        if self._forced(key):
            return True  # what is there is to be recomputed
        w = self.store.open_writer(key, len(split))
        records, claims = w.listing()
        for a, e in _chunk_plan([(0, len(split))], grid_rows(self.chunk_rows, batch_size)):
            name = chunk_name(a, e)
            if name in records:
                continue
            try:
                info = read_claim(claims[name]) if name in claims else None
            except OSError:
                info = None
            if info is None or info.stale(self.store.lock_timeout):
                return True
        return False

    def cached(self, model, split, flip: bool = False) -> bool:
        """Whether the features are in the cache (memory or a complete, intact entry)."""
        key = self.key(model, split, flip)
        return not self._forced(key) and (key in self._memory or self.store.read("features", key) is not None)

    def features(
        self,
        model,
        split,
        flip: bool = False,
        batch_size: int = 128,
        num_workers: int | None = None,
        progress: bool = False,
    ) -> Features:
        return self.features_many([(model, flip)], split, batch_size, num_workers, progress)[0]

    def features_many(
        self,
        requests: list[tuple[Any, bool]],
        split,
        batch_size: int = 128,
        num_workers: int | None = None,
        progress: bool = False,
        extractor: Callable[..., list[Features]] | None = None,
    ) -> list[Features]:
        """Features of ``split`` for every (model, flip), extracting those not cached in ONE pass
        over the images (``extractor``, default :func:`extract_many`; the Ray engine passes its
        own), each committed chunk by chunk to its own entry."""
        keys = [self.key(m, split, flip) for m, flip in requests]
        out: list[Features | None] = [None] * len(requests)
        for i, key in enumerate(keys):
            if key not in keys[:i]:
                out[i] = self._read(key, split)
        todo = [i for i, f in enumerate(out) if f is None and keys[i] not in keys[:i]]
        if todo and self.share and extractor is None:
            self._shared(requests, split, keys, todo, out, batch_size, num_workers, progress, wait=True)
        elif todo:
            with contextlib.ExitStack() as locks:
                for key in sorted({keys[i] for i in todo}):
                    locks.enter_context(self.store.lock("features", key))
                needs, which = [], []
                for i in todo:  # another process may have written it while we waited
                    key = keys[i]
                    if self._forced(key):
                        self.store.discard("features", key)
                        self._refreshed.add(key)
                    else:
                        out[i] = self._read(key, split)
                        if out[i] is not None:
                            continue
                    writer = self._writer(key, split)
                    m, flip = requests[i]
                    needs.append(Need(m, flip, writer))
                    which.append(i)
                if needs:
                    self.extractions += 1
                    got = (extractor or extract_many)(
                        needs,
                        split,
                        batch_size,
                        num_workers,
                        progress,
                        self.chunk_rows,
                        self.store.write_failed,
                    )
                    self.decoded_rows += max((int(f.loader.get("decoded_rows", 0)) for f in got), default=0)
                    for i, f in zip(which, got):
                        f.key = keys[i]
                        self._remember(keys[i], f)
                        out[i] = f
        for i, key in enumerate(keys):  # duplicates of an earlier request
            if out[i] is None:
                out[i] = out[keys.index(key)]
        return out  # type: ignore[return-value]

    def _writer(self, key: str, split) -> ChunkWriter | None:
        """A chunk writer for ``key``'s entry, or None where the cache cannot be written (the
        pass then runs in memory; :meth:`Store.write_failed` says so once)."""
        if not self.store.writable():
            return None
        writer = self.store.open_writer(key, len(split))
        try:
            writer.chunk_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.store.write_failed(e)
            return None
        return writer

    def help_many(
        self,
        requests: list[tuple[Any, bool]],
        split,
        batch_size: int = 128,
        num_workers: int | None = None,
        progress: bool = False,
    ) -> int:
        """A help pass (:class:`Share`, ``wait=False``): decode the chunks of ``split`` that no
        other process has claimed, for every (model, flip) not cached, commit them, finalise the
        entries they complete, and return without waiting for the rest.  The rows decoded."""
        keys = [self.key(m, split, flip) for m, flip in requests]
        out: list[Features | None] = [None] * len(requests)
        todo = [
            i
            for i, key in enumerate(keys)
            if key not in keys[:i] and not self.ready(requests[i][0], split, requests[i][1])
        ]
        return self._shared(requests, split, keys, todo, out, batch_size, num_workers, progress, wait=False)

    def _shared(self, requests, split, keys, todo, out, batch_size, num_workers, progress, wait: bool) -> int:
        """Extract ``todo`` together with other processes (chunk claims); fills ``out`` when
        ``wait``.  The rows this process decoded."""
        needs, which = [], []
        for i in todo:
            key = keys[i]
            if self._forced(key):  # --refresh-features: what this run's processes wrote stays
                with self.store.lock("features", key, quiet=30.0):
                    self.store.discard("features", key, older_than=self.refresh_before)
                self._refreshed.add(key)
            if wait:
                out[i] = self._read(key, split)
                if out[i] is not None:
                    continue
            writer = self._writer(key, split)
            if writer is None and not wait:
                continue  # nothing to share through an unwritable cache
            m, flip = requests[i]
            needs.append(Need(m, flip, writer))
            which.append(i)
        if not needs:
            return 0
        from harness.share import Share

        share = Share(self.store, wait=wait)
        got = extract_many(
            needs, split, batch_size, num_workers, progress, self.chunk_rows, self.store.write_failed, share
        )
        if all(nd.writer is not None for nd in needs):
            decoded = share.decoded
        else:  # extracted alone (unwritable cache)
            decoded = max((int(f.loader.get("decoded_rows", 0)) for f in got), default=0)
        self.decoded_rows += decoded
        self.extractions += 1 if decoded else 0
        for i, f in zip(which, got):
            f.key = keys[i]
            self._remember(keys[i], f)
            out[i] = f
        return decoded

    def text_classifier(
        self, model, classnames: list[str], templates: list, build: Callable[[], np.ndarray]
    ) -> np.ndarray:
        key = text_key(
            model.fingerprint,
            classnames,
            [getattr(t, "__name__", t) for t in templates],
            runtime_fingerprint(model),
        )
        force = self._forced(key)
        if not force and key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]

        def check(arrays: dict, meta: dict) -> None:
            w = arrays["w"]
            if w.ndim != 2 or w.shape[1] != len(classnames):  # [embedding dim, classes]
                raise DamagedEntry(f"classifier of shape {w.shape} for {len(classnames)} classes")

        with self.store.lock("text", key):
            got = None if force else self.store.read("text", key, check)
            if got is not None:
                return self._remember(key, np.asarray(got[0]["w"]))
            self._refreshed.add(key)
            w = np.asarray(build(), dtype=np.float32)
            if self.store.writable():
                try:
                    self.store.discard("text", key)
                    self.store.write("text", key, {"w": w}, {"classes": len(classnames)})
                except OSError as e:
                    self.store.write_failed(e)
        return self._remember(key, w)


def check_unreadable(features: Features, where: str) -> None:
    """More than 1 % unreadable images fails the case, listing the first few paths."""
    n = len(features)
    if n and features.skipped / n > MAX_UNREADABLE:
        raise DataError(
            f"{where}: {features.skipped} of {n} images unreadable "
            f"(> {MAX_UNREADABLE:.0%}); first: {', '.join(features.bad_items[:3])}"
        )
