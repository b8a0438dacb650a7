"""``--shard I/N``: a deterministic share of the selected cases, grouped by model.

Shards are for batch schedulers (a SLURM array): N processes that do not talk to each other
each run ``--shard I/N`` (I = 1..N) into their own results folder, and the merge command joins
their results.json files into one report.  Every case lands in exactly one shard, the same one
on every machine, and all the cases of one model land in the same shard whenever there are at
least N models, so that each model loads once in the whole array.  With fewer models than
shards the largest models' cases are split by dataset, so that no shard is left idle.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(HarnessError):
    """A malformed ``--shard`` value."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` with 1 <= I <= N -> (I, N)."""
    m = _SHARD.match(str(text))
    if not m:
        raise ShardError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ShardError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")
    return i, n


def assign(cases: Sequence[tuple[str, str, str]], n: int) -> dict[tuple[str, str, str], int]:
    """Shard (1..n) of every (protocol, model, dataset) case.

    Groups are a model's cases (or, when there are fewer models than shards, a model's cases on
    one dataset); groups go, largest first, to the least-loaded shard (ties: the lowest).  Only
    the set of cases matters, not their order."""
    by_model: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for c in sorted(set(cases)):
        by_model[c[1]].append(c)
    groups = list(by_model.values())
    if len(groups) < n:
        groups = []
        for model in sorted(by_model):
            by_ds: dict[str, list] = defaultdict(list)
            for c in by_model[model]:
                by_ds[c[2]].append(c)
            groups += list(by_ds.values())
    groups.sort(key=lambda g: (-len(g), g[0]))
    load = [0] * n
    out: dict[tuple[str, str, str], int] = {}
    for g in groups:
        k = min(range(n), key=lambda j: (load[j], j))
        load[k] += len(g)
        for c in g:
            out[c] = k + 1
    return out
