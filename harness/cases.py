"""The case: one model x dataset x protocol, and what runs it needs without pytest.

:class:`CaseSpec` is the identity of a case (its id ``model-dataset`` is what pytest shows
after ``test_<protocol>``); :func:`timed` runs a protocol computation and reports how long it
took.  (Devices: :mod:`harness.devices`.)  Used by the
plugin (parametrization, scheduling, results) and by the fixtures, which import it from here
rather than from the plugin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class Timing:
    seconds: float
    images_per_second: float | None = None

    def details(self) -> dict[str, float]:
        out = {"protocol_seconds": round(self.seconds, 4)}
        if self.images_per_second is not None:
            out["protocol_images_per_second"] = round(self.images_per_second, 1)
        return out


def timed(
    fn: Callable[..., Any],
    *args: Any,
    n_images: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    **kwargs: Any,
) -> tuple[Any, Timing]:
    """Run ``fn(*args, **kwargs)`` once: ``(its result, Timing)``; ``n_images`` adds a rate."""
    t0 = clock()
    out = fn(*args, **kwargs)
    dt = clock() - t0
    ips = n_images / max(dt, 1e-9) if n_images else None
    return out, Timing(dt, ips)
