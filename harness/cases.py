"""The case: one model x dataset x protocol, and what runs it needs without pytest.

:class:`CaseSpec` is the identity of a case (its id ``model-dataset`` is what pytest shows
after ``test_<protocol>``); :func:`resolve_device` / :func:`check_device` choose and check the
device; :func:`timed` runs a protocol computation and reports how long it took.  Used by the
plugin (parametrization, scheduling, results) and by the fixtures, which import it from here
rather than from the plugin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.errors import HarnessError


@dataclass(frozen=True)
class CaseSpec:
    protocol: str
    model: str
    dataset: str

    @property
    def id(self) -> str:
        """The parametrization id: ``model-dataset`` (after ``test_<protocol>``)."""
        return f"{self.model}-{self.dataset}"

    @property
    def key(self) -> tuple[str, str, str]:
        """The results store's key: ``(protocol, model, dataset)``."""
        return (self.protocol, self.model, self.dataset)

    def where(self) -> str:
        return f"{self.protocol} {self.model}/{self.dataset}"


DEVICE_FORMS = "cpu, cuda, cuda:N or mps"


def check_device(requested: str | None) -> None:
    """Raise :class:`HarnessError` (one line) when ``--device`` names a device that is absent.

    Imports torch only when a device other than ``cpu`` is requested."""
    if not requested or requested == "cpu":
        return
    kind, _, index = requested.partition(":")
    if kind not in ("cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise HarnessError(f"--device {requested}: expected {DEVICE_FORMS}")
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HarnessError(f"--device {requested}: CUDA is not available on this machine "
                               f"(torch {torch.__version__}); use --device cpu or omit --device")
        n = torch.cuda.device_count()
        if index and int(index) >= n:
            raise HarnessError(f"--device {requested}: this machine has {n} CUDA device(s), "
                               f"cuda:0..cuda:{n - 1}")
    else:
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise HarnessError(f"--device {requested}: MPS is not available on this machine; "
                               "use --device cpu or omit --device")


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


@dataclass(frozen=True)
class Timing:
    seconds: float
    images_per_second: float | None = None

    def details(self) -> dict[str, float]:
        out = {"protocol_seconds": round(self.seconds, 4)}
        if self.images_per_second is not None:
            out["protocol_images_per_second"] = round(self.images_per_second, 1)
        return out


def timed(fn: Callable[..., Any], *args: Any, n_images: int | None = None,
          clock: Callable[[], float] = time.perf_counter, **kwargs: Any) -> tuple[Any, Timing]:
    """Run ``fn(*args, **kwargs)`` once: ``(its result, Timing)``; ``n_images`` adds a rate."""
    t0 = clock()
    out = fn(*args, **kwargs)
    dt = clock() - t0
    ips = n_images / max(dt, 1e-9) if n_images else None
    return out, Timing(dt, ips)
