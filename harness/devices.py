"""Which device and which CPU cores a process uses, alone or as one of ``pytest -n N`` workers.

- ``--device cuda:0,2,3`` names a list: worker k uses entry k mod len (the main process, entry 0).
- ``--device cuda`` (or the default on a CUDA machine) under xdist: worker k uses the k-th
  visible GPU (k mod the number of visible GPUs), so N workers on an N-GPU node keep every GPU
  busy instead of all sharing device 0.
- CPU cores are divided among the workers: worker k is pinned to its own contiguous share of the
  cores this process may use, so that each worker's loader plans for its share, not the whole
  machine (the loader reads the affinity mask).
"""

from __future__ import annotations

import os
import re

from harness.errors import HarnessError

_LIST = re.compile(r"^(cpu|mps)$|^(cuda)(?::(\d+(?:,\d+)*))?$")


DEVICE_FORMS = "cpu, cuda, cuda:N, cuda:N,M,... or mps"


def resolve_device(requested: str | None) -> str:
    """``--device`` as given, else the best available: cuda, then mps, then cpu."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(requested: str | None) -> None:
    """Raise :class:`HarnessError` (one line) when ``--device`` names a device that is absent.

    Imports torch only when a device other than ``cpu`` is requested."""
    if not requested or requested == "cpu":
        return
    kind, ids = parse_device(requested)
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(
                f"--device {requested}: CUDA is not available on this machine "
                f"(torch {torch.__version__}); use --device cpu or omit --device"
            )
        n = torch.cuda.device_count()
        bad = [i for i in ids or [] if i >= n]
        if bad:
            raise HarnessError(
                f"--device {requested}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}"
            )
    else:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise HarnessError(
                f"--device {requested}: MPS is not available on this machine; "
                "use --device cpu or omit --device"
            )


def worker_index(worker_id: str | None) -> int | None:
    """xdist's ``gw3`` -> 3; None outside xdist."""
    if not worker_id:
        return None
    m = re.fullmatch(r"gw(\d+)", worker_id)
    return int(m.group(1)) if m else None


def parse_device(text: str) -> tuple[str, list[int] | None]:
    """``"cuda:0,2"`` -> ("cuda", [0, 2]); ``"cuda"`` -> ("cuda", None)."""
    m = _LIST.match(text.strip())
    if not m:
        raise HarnessError(f"--device {text}: expected {DEVICE_FORMS}")
    if m.group(1):
        return m.group(1), None
    return "cuda", None if m.group(3) is None else [int(x) for x in m.group(3).split(",")]


def pick_device(requested: str, worker: int | None, cuda_count: int) -> str:
    """The torch device string for this process (``requested`` already resolved: never empty)."""
    kind, ids = parse_device(requested)
    k = worker or 0
    if kind == "cuda":
        if ids:
            return f"cuda:{ids[k % len(ids)]}"
        if worker is not None and cuda_count > 1:
            return f"cuda:{k % cuda_count}"
        return "cuda"
    return kind


def cpu_share(cpus: list[int], worker: int | None, n_workers: int | None) -> list[int]:
    """Worker k's contiguous share of ``cpus`` (all of them outside xdist).  With more workers
    than cores, workers share cores round-robin (each gets one)."""
    if worker is None or not n_workers or n_workers <= 1:
        return list(cpus)
    cpus = sorted(cpus)
    if n_workers >= len(cpus):
        return [cpus[worker % len(cpus)]]
    lo = worker * len(cpus) // n_workers
    hi = (worker + 1) * len(cpus) // n_workers
    return cpus[lo:hi]


def pin_worker_cpus(worker: int | None, n_workers: int | None) -> list[int] | None:
    """Pin this process to its share of the cores (Linux); returns the share, or None."""
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return None
    share = cpu_share(sorted(os.sched_getaffinity(0)), worker, n_workers)
    os.sched_setaffinity(0, share)
    return share
