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
from collections.abc import Sequence
from typing import TypeVar

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


def claim_results_dir(folder, i: int, n: int) -> None:
    """Refuse a results folder that another shard of the array writes to.

    The first shard to use the folder leaves ``.shard`` (``I/N``) in it, created exclusively;
    a different shard finding it there is a usage error (the same shard re-running is fine)."""
    import os
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".shard"
    me = f"{i}/{n}"
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        other = marker.read_text(encoding="utf-8").strip()
        if other != me:
            raise ShardError(
                f"--results-dir {folder}: already used by shard {other}; give each "
                f"shard its own folder (e.g. results/shard-{i}-of-{n})"
            ) from None
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(me + "\n")
