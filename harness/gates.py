"""Gates and the ``--baseline`` / ``--max-drop`` comparison: plain functions, no pytest.

A gate (``[[gates]]`` in a suite) bounds one metric of the cases it applies to; ``--max-drop
POINTS`` fails a case whose metric moved the wrong way by more than POINTS percentage points
against the same case of an earlier run (``--baseline OLD/results.json``).  Direction comes
from the protocol registry (:func:`harness.protocols.lower_is_better`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError, SuiteError
from harness.protocols import PROTOCOLS, lower_is_better
from harness.suite import Gate, Suite

if TYPE_CHECKING:
    from harness.results import RunData

Baseline = dict[tuple[str, str, str], dict[str, float]]  # (protocol, model, dataset) -> metrics


def check_options(baseline: str | None, max_drop: float | None) -> None:
    """``--baseline`` and ``--max-drop`` go together; ``--max-drop`` is a non-negative number."""
    if max_drop is not None and not baseline:
        raise HarnessError(f"--max-drop {max_drop:g} needs --baseline OLD/results.json to compare against")
    if baseline and max_drop is None:
        raise HarnessError(
            f"--baseline {baseline} needs --max-drop POINTS (the percentage points a metric may lose)"
        )
    if max_drop is not None and not max_drop >= 0:
        raise HarnessError(f"--max-drop {max_drop:g}: expected a number of points >= 0")


def read_baseline_run(path: str | os.PathLike) -> RunData:
    """``--baseline``: an earlier run's results.json (and the journal a killed run left), read
    completely.  The plugin reads it once, at configure time, before this run writes anything
    (it may be the very results.json this run is about to rewrite).  Raises HarnessError."""
    from harness.results import load_run

    p = Path(path)
    if not p.exists():
        raise HarnessError(f"--baseline {p}: file not found; expected an earlier run's results.json")
    if p.is_dir():
        hint = " (did you mean {}?)".format(p / "results.json") if (p / "results.json").is_file() else ""
        raise HarnessError(f"--baseline {p}: is a folder; expected a results.json file{hint}")
    if not p.is_file():
        raise HarnessError(f"--baseline {p}: not a regular file; expected a results.json file")
    return load_run(p)


def baseline_metrics(run: RunData | None) -> Baseline:
    """{(protocol, model, dataset): metrics} of the baseline's passed cases."""
    if run is None:
        return {}
    return {r.key: dict(r.metrics) for r in run.records if r.status == "passed"}


def load_baseline(path: str | os.PathLike) -> Baseline:
    """The passed cases' metrics of an earlier run's results.json, by case key."""
    return baseline_metrics(read_baseline_run(path))


def protocols_of_gate(gate: Gate, suite: Suite) -> list[str]:
    """The protocols of the cases a gate can apply to."""
    if gate.protocol is not None:
        return [gate.protocol]
    datasets = [suite.datasets[gate.dataset]] if gate.dataset else list(suite.datasets.values())
    return list(dict.fromkeys(p for d in datasets for p in d.protocols))


def validate_gates(suite: Suite) -> None:
    """Every gate names a metric that at least one protocol it applies to produces."""
    for i, g in enumerate(suite.gates):
        protocols = protocols_of_gate(g, suite)
        if not protocols:
            raise SuiteError(f"{suite.path}: [gates[{i}]]: applies to no case of the suite")
        if not any(PROTOCOLS[p].produces(g.metric) for p in protocols):
            known = sorted({m for p in protocols for m in PROTOCOLS[p].metrics})
            raise SuiteError(
                f"{suite.path}: [gates[{i}]] metric: {g.metric!r} is not produced by "
                f"{'/'.join(protocols)}; expected one of {', '.join(known)}"
            )


def gate_failures(
    gates: Iterable[Gate], protocol: str, model: str, dataset: str, metrics: Mapping[str, float]
) -> list[str]:
    """One message per gate bound that the case's metrics break."""
    out = []
    where = f"{protocol} {model}/{dataset}"
    for g in gates:
        if not g.applies(protocol, model, dataset):
            continue
        if g.metric not in metrics:
            if PROTOCOLS[protocol].produces(g.metric):  # e.g. acc5 with fewer than 5 classes
                out.append(f"gate on {g.metric}: metric not produced ({where})")
            continue
        v = metrics[g.metric]
        if g.min is not None and v < g.min:
            out.append(f"{g.metric} {100 * v:.1f}% < min {100 * g.min:.1f}% ({where})")
        if g.max is not None and v > g.max:
            out.append(f"{g.metric} {100 * v:.1f}% > max {100 * g.max:.1f}% ({where})")
    return out


def drop_failures(
    protocol: str,
    model: str,
    dataset: str,
    metrics: Mapping[str, float],
    baseline: Baseline,
    max_drop: float | None,
) -> list[str]:
    """One message per metric that lost more than ``max_drop`` points against ``baseline``."""
    if max_drop is None or not baseline:
        return []
    old = baseline.get((protocol, model, dataset), {})
    where = f"{protocol} {model}/{dataset}"
    out = []
    for k, v in metrics.items():
        if k not in old:
            continue
        drop = (v - old[k]) if lower_is_better(k, protocol) else (old[k] - v)
        if 100 * drop > max_drop + 1e-9:
            out.append(
                f"{k} lost {100 * drop:.2f} points: {100 * old[k]:.1f}% -> "
                f"{100 * v:.1f}% (max-drop {max_drop:g}) ({where})"
            )
    return out
