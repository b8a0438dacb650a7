"""Result records, the results store, the trade-off matrix, GELO and their rendering.

Pure and pytest-free: the plugin feeds :class:`ResultStore` with records as cases end; the store
rewrites ``results.json`` atomically after every update so an interrupted run keeps every
finished case.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness._io import atomic_write
from harness.protocols import PROTOCOLS, lower_is_better

STATUSES = ("passed", "failed", "skipped", "error", "not run")


@dataclass
class CaseRecord:
    model: str
    dataset: str
    protocol: str
    status: str = "not run"
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    nodeid: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.protocol, self.model, self.dataset)

    def to_json(self) -> dict:
        d = asdict(self)
        if d["reason"] is None:
            d.pop("reason")
        if not d["details"]:
            d.pop("details")
        return d


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


# ------------------------------------------------------------------------- matrix + GELO

def headline(protocol: str) -> str:
    info = PROTOCOLS.get(protocol)
    return info.headline if info else "acc1"


def matrix(records: Iterable[CaseRecord], protocol: str, metric: str | None = None
           ) -> dict[str, dict[str, float]]:
    """{model: {dataset: value}} of one metric over the passed cases of one protocol."""
    metric = metric or headline(protocol)
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if r.protocol == protocol and r.status == "passed" and metric in r.metrics:
            out.setdefault(r.model, {})[r.dataset] = float(r.metrics[metric])
    return out


def average(row: dict[str, float], datasets: Iterable[str] | None = None) -> float | None:
    keys = list(row) if datasets is None else [d for d in datasets if d in row]
    if not keys:
        return None
    return sum(row[d] for d in keys) / len(keys)


def gelo(mat: dict[str, dict[str, float]], model: str, baseline: str) -> float | None:
    """GELO = model's mean over the datasets both have / baseline's mean over the same ones.

    A dataset that only one of the pair has is not averaged in; None when they share none or
    the baseline's mean is 0.
    """
    a, b = mat.get(model, {}), mat.get(baseline, {})
    common = sorted(set(a) & set(b))
    if not common:
        return None
    ma, mb = average(a, common), average(b, common)
    if not mb:
        return None
    return ma / mb


def gelo_table(records: list[CaseRecord], baselines: dict[str, str | None]
               ) -> dict[str, dict[str, float]]:
    """{protocol: {model: GELO}} for every protocol whose registry entry has ``gelo``."""
    out: dict[str, dict[str, float]] = {}
    for protocol in sorted({r.protocol for r in records}):
        if protocol not in PROTOCOLS or not PROTOCOLS[protocol].gelo:
            continue
        mat = matrix(records, protocol)
        for model, base in baselines.items():
            if base is None:
                continue
            g = gelo(mat, model, base)
            if g is not None:
                out.setdefault(protocol, {})[model] = g
    return out


# -------------------------------------------------------------------------------- store

class ResultStore:
    """Records keyed by (protocol, model, dataset), persisted to ``results.json``."""

    def __init__(self, path: str | os.PathLike | None, run: dict[str, Any],
                 baselines: dict[str, str | None] | None = None):
        self.path = Path(path) if path is not None else None
        self.run = run
        self.baselines = baselines or {}
        self.records: dict[tuple[str, str, str], CaseRecord] = {}
        self.model_loads: dict[str, int] = {}

    def add_pending(self, rec: CaseRecord) -> None:
        self.records.setdefault(rec.key, rec)

    def update(self, rec: CaseRecord) -> None:
        self.records[rec.key] = rec
        self.write()

    def count_load(self, model: str) -> None:
        self.model_loads[model] = self.model_loads.get(model, 0) + 1

    def to_json(self) -> dict:
        recs = list(self.records.values())
        run = dict(self.run)
        run["model_loads"] = dict(self.model_loads)
        return {"run": run, "cases": [r.to_json() for r in recs],
                "gelo": gelo_table(recs, self.baselines)}

    def write(self) -> None:
        if self.path is None:
            return
        write_text_atomic(self.path, json.dumps(_plain(self.to_json()), indent=2) + "\n")


def _plain(x: Any) -> Any:
    """JSON-safe: NaN/inf become null (results.json must parse everywhere)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def load_results(path: str | os.PathLike) -> list[CaseRecord]:
    """Read an earlier run's results.json (for --baseline)."""
    from harness.errors import HarnessError

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"--baseline {p}: file not found") from None
    except json.JSONDecodeError as e:
        raise HarnessError(f"--baseline {p}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise HarnessError(f"--baseline {p}: expected a results.json with a 'cases' list")
    out = []
    for i, c in enumerate(data["cases"]):
        try:
            out.append(CaseRecord(model=c["model"], dataset=c["dataset"], protocol=c["protocol"],
                                  status=c.get("status", "passed"),
                                  metrics={k: float(v) for k, v in (c.get("metrics") or {}).items()
                                           if v is not None}))
        except (KeyError, TypeError, ValueError) as e:
            raise HarnessError(f"--baseline {p}: cases[{i}] malformed ({e}); expected model, "
                               "dataset, protocol and metrics") from None
    return out


# ------------------------------------------------------------------------------ markdown

def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|")


def _arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


def _bold_best(rows: list[list[Any]], cols: range, lower: bool) -> None:
    """Bold the best numeric value in each column (ties all bold)."""
    for j in cols:
        vals = [r[j] for r in rows if isinstance(r[j], float)]
        if not vals:
            continue
        best = min(vals) if lower else max(vals)
        for r in rows:
            if isinstance(r[j], float) and math.isclose(r[j], best, rel_tol=0, abs_tol=1e-12):
                r[j] = f"**{_pct(r[j])}**"


def _fmt_rows(rows: list[list[Any]]) -> list[list[str]]:
    return [[_pct(c) if isinstance(c, float) or c is None else c for c in r] for r in rows]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def protocol_table(records: list[CaseRecord], protocol: str, models: dict[str, str],
                   datasets: dict[str, str], baselines: dict[str, str | None],
                   metric: str | None = None) -> str | None:
    """Models x datasets in percent, with Avg and GELO columns; best value per column in bold.

    ``models``/``datasets`` map ids to display names, in the order to show.
    """
    metric = metric or headline(protocol)
    mat = matrix(records, protocol, metric)
    if not mat:
        return None
    ds = [d for d in datasets if any(d in row for row in mat.values())]
    lower = lower_is_better(metric)
    rows: list[list[Any]] = []
    for m in models:
        if m not in mat:
            continue
        row = mat[m]
        g = None
        if protocol in PROTOCOLS and PROTOCOLS[protocol].gelo and baselines.get(m):
            g = gelo(mat, m, baselines[m])
        rows.append([_esc(models[m])] + [row.get(d) for d in ds] + [average(row, ds)]
                    + [("–" if g is None else f"{g:.3f}")])
    _bold_best(rows, range(1, len(ds) + 2), lower)
    headers = ["Model"] + [_esc(datasets[d]) for d in ds] + ["Avg", "GELO"]
    return _table(headers, _fmt_rows(rows))


def detail_table(records: list[CaseRecord], protocol: str, dataset: str, models: dict[str, str],
                 metrics: list[str] | None = None) -> str | None:
    """Models x metrics of one biometric dataset, in percent, with arrows."""
    recs = {r.model: r for r in records
            if r.protocol == protocol and r.dataset == dataset and r.status == "passed"}
    if not recs:
        return None
    if metrics is None:
        seen: dict[str, None] = {}
        for r in recs.values():
            for k in r.metrics:
                if "[" not in k:
                    seen[k] = None
        metrics = list(seen)
    rows = []
    for m in models:
        if m in recs:
            rows.append([_esc(models[m])] + [recs[m].metrics.get(k) for k in metrics])
    for j, k in enumerate(metrics, start=1):
        _bold_best(rows, range(j, j + 1), lower_is_better(k))
    headers = ["Model"] + [f"{_esc(k)} {_arrow(k)}" for k in metrics]
    return _table(headers, _fmt_rows(rows))


MAD_COLUMNS = ("eer", "apcer@bpcer=0.01", "apcer@bpcer=0.1", "apcer@bpcer=0.2",
               "bpcer@apcer=0.01", "bpcer@apcer=0.1", "bpcer@apcer=0.2")


def method_table(records: list[CaseRecord], protocol: str, dataset: str, models: dict[str, str],
                 metrics: tuple[str, ...] = MAD_COLUMNS) -> str | None:
    """Per attack method (``metric[method]`` keys) and their average, per model: the study's
    MAD table (EER, APCER@BPCER 1/10/20 %, BPCER@APCER 1/10/20 %)."""
    rows = []
    for m in models:
        rec = next((r for r in records if r.protocol == protocol and r.dataset == dataset
                    and r.model == m and r.status == "passed"), None)
        if rec is None:
            continue
        methods = sorted({k.split("[", 1)[1][:-1] for k in rec.metrics
                          if "[" in k and k.split("[", 1)[0] == metrics[0]})
        if not methods:
            continue
        for meth in methods:
            rows.append([_esc(models[m]), _esc(meth)] + [rec.metrics.get(f"{k}[{meth}]") for k in metrics])
        rows.append([_esc(models[m]), "average"] + [rec.metrics.get(k) for k in metrics])
    if not rows:
        return None
    headers = ["Model", "Method"] + [f"{_esc(k)} {_arrow(k)}" for k in metrics]
    return _table(headers, _fmt_rows(rows))


def render_report(records: list[CaseRecord], models: dict[str, str], datasets: dict[str, str],
                  baselines: dict[str, str | None], title: str = "Trade-off report",
                  run: dict[str, Any] | None = None) -> str:
    parts = [f"# {title}", ""]
    if run:
        parts += [", ".join(f"{k}: {v}" for k, v in run.items() if k in
                            ("suite", "started", "device", "torch", "open_clip", "git_commit")), ""]
    order = [p for p in PROTOCOLS if any(r.protocol == p for r in records)]
    for p in order:
        metric = headline(p)
        t = protocol_table(records, p, models, datasets, baselines)
        parts.append(f"## {p} — {metric} {_arrow(metric)} (%)")
        parts.append("")
        parts.append(t if t else "_no passed cases_")
        parts.append("")
        if PROTOCOLS[p].detail_tables:
            for d in datasets:
                dt = detail_table(records, p, d, models)
                if dt:
                    parts += [f"### {p} — {_esc(datasets[d])} (%)", "", dt, ""]
                mt = method_table(records, p, d, models) if PROTOCOLS[p].per_method_table else None
                if mt:
                    parts += [f"### {p} — {_esc(datasets[d])} per method (%)", "", mt, ""]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts.append("Cases: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts))
    problems = [r for r in records if r.status in ("failed", "error", "skipped")]
    if problems:
        parts += ["", "| case | status | reason |", "|---|---|---|"]
        for r in problems:
            reason = _esc((r.reason or "").splitlines()[0] if r.reason else "")
            parts.append(f"| {r.protocol}[{_esc(r.model)}-{_esc(r.dataset)}] | {r.status} | {reason} |")
    return "\n".join(parts).rstrip() + "\n"
