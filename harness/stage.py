"""The feature stage's core: one decode pass over a split for every model that needs it.

:func:`extract_many` reads each image of a split once, applies each *distinct* preprocessing
once (models whose preprocessing fingerprints are equal share the resize), and runs every
model on its own tensor.  Each model's features are bit-identical to what
:func:`harness.features.extract` gives for that model alone: the same transform, the same
batches, the same forward pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from harness.errors import DataError


@dataclass(frozen=True)
class Need:
    """One model's request on a split: ``flip`` fuses f(x) + f(flip x)."""

    model: Any
    flip: bool = False


class _MultiDataset:
    """torch Dataset over a Split: (tuple of tensors, one per distinct transform, index, ok)."""

    def __init__(self, split, transforms: Sequence[Any], sizes: Sequence[int]):
        self.split = split
        self.transforms = list(transforms)
        self.sizes = list(sizes)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        import torch

        try:
            img = self.split.load(i)
            return tuple(t(img) for t in self.transforms), i, True
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - any decode failure counts as an unreadable image
            return tuple(torch.zeros(3, s, s) for s in self.sizes), i, False


def _groups(needs: Sequence[Need]) -> tuple[list[Any], list[int]]:
    """Distinct preprocessings (by fingerprint) and, per need, the index of its own."""
    order: dict[str, int] = {}
    pres: list[Any] = []
    index: list[int] = []
    for n in needs:
        fp = n.model.preprocess.fingerprint
        if fp not in order:
            order[fp] = len(pres)
            pres.append(n.model.preprocess)
        index.append(order[fp])
    return pres, index


def _probe_costs(needs: Sequence[Need], ds: _MultiDataset, index: list[int], k: int = 8
                 ) -> tuple[float, float]:
    """Per image: decode + every preprocessing on one core, and every model's forward."""
    import torch

    k = min(k, len(ds))
    t0 = time.perf_counter()
    samples = [ds[i][0] for i in range(k)]
    decode = (time.perf_counter() - t0) / k
    forward = 0.0
    for n, j in zip(needs, index):
        batch = torch.stack([s[j] for s in samples])
        if n.flip:
            batch = torch.cat([batch, batch.flip(-1)], 0)
        n.model.encode_image(batch)  # warm-up
        t0 = time.perf_counter()
        n.model.encode_image(batch)
        forward += (time.perf_counter() - t0) / k
    return decode, forward


def extract_many(needs: Sequence[Need], split, batch_size: int = 128,
                 num_workers: int | None = None, progress: bool = False) -> list:
    """Features of ``split`` for every need, from one pass over its images.

    Returns one :class:`harness.features.Features` per need, in order.  ``seconds`` of each is
    the wall time of the shared pass (the pass is not divisible per model).
    """
    import torch
    from torch.utils.data import DataLoader

    from harness.features import Features, _cpus, _num_workers, plan_cpu_loader

    if not needs:
        return []
    pres, index = _groups(needs)
    ds = _MultiDataset(split, [p.transform() for p in pres], [p.size for p in pres])
    devices = {str(n.model.device) for n in needs}
    on_cpu = devices == {"cpu"}
    on_cuda = any(d.startswith("cuda") for d in devices)
    threads_before = torch.get_num_threads()
    threads = threads_before
    if num_workers is None and on_cpu and len(ds) >= 512:
        workers, threads = plan_cpu_loader(*_probe_costs(needs, ds, index), _cpus())
    else:
        workers = _num_workers(len(ds), num_workers)
        if on_cpu and workers:
            threads = max(1, _cpus() - workers)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=on_cuda, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    outs: list[np.ndarray | None] = [None] * len(needs)
    valid = np.ones(len(ds), dtype=bool)
    bar = None
    if progress:
        from tqdm import tqdm

        names = ",".join(dict.fromkeys(str(n.model.id) for n in needs))
        bar = tqdm(total=len(ds), unit="img", desc=f"features {names}/{split.name}",
                   leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for images, idx, ok in loader:
                idx_np = idx.numpy()
                for k, (n, j) in enumerate(zip(needs, index)):
                    x = images[j]
                    if n.flip:
                        f = n.model.encode_image(torch.cat([x, x.flip(-1)], 0))
                        f = f[: len(x)] + f[len(x):]
                    else:
                        f = n.model.encode_image(x)
                    f = f.cpu().numpy()
                    if outs[k] is None:
                        outs[k] = np.zeros((len(ds), f.shape[1]), dtype=np.float32)
                    outs[k][idx_np] = f  # type: ignore[index]
                valid[idx_np] = ok.numpy().astype(bool)
                if bar is not None:
                    bar.update(len(idx_np))
    finally:
        torch.set_num_threads(threads_before)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    bad = [str(split.items[i]) if isinstance(split.items[i], (str, os.PathLike)) else f"#{i}"
           for i in np.flatnonzero(~valid)]
    result = []
    for out in outs:
        x = np.zeros((0, 0), dtype=np.float32) if out is None else out
        x[~valid] = 0.0
        result.append(Features(x, split.labels, valid.copy(), list(bad), seconds, False,
                               loader={"workers": workers, "threads": threads,
                                       "shared_models": len(needs),
                                       "distinct_preprocessing": len(pres)}))
    return result
