"""Result records, the results store, the trade-off matrix and GELO.

Pure and pytest-free: the plugin feeds :class:`ResultStore` with records as cases end.

Durability without quadratic cost: each finished record is appended to a journal
(``results.journal.jsonl`` beside ``results.json``, one JSON line, written straight to the
file) and ``results.json`` is rewritten in full at most every ``flush_interval`` seconds and at
the end.  A process killed at any point leaves ``results.json`` (valid, maybe older) plus the
journal; :func:`load_run` reads both.  A write that fails (a full disk) never raises: the
records stay in memory, the error is kept in :attr:`ResultStore.write_error`, and the next
flush retries.

Rendering lives in :mod:`harness.report`, plots in :mod:`harness.plots`, exports in
:mod:`harness.export`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness._io import atomic_write
from harness.protocols import PROTOCOLS, lower_is_better

STATUSES = ("passed", "failed", "skipped", "error", "not run")
JOURNAL_NAME = "results.journal.jsonl"


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
    n: dict[str, int] = field(default_factory=dict)
    ci: dict[str, list[float]] = field(default_factory=dict)
    ci_method: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.protocol, self.model, self.dataset)

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "protocol": self.protocol,
            "status": self.status,
            "seconds": self.seconds,
            "metrics": dict(self.metrics),
        }
        if self.reason is not None:
            d["reason"] = self.reason
        for k in ("details", "n", "ci", "ci_method"):
            v = getattr(self, k)
            if v:
                d[k] = copy.deepcopy(v) if k == "details" else dict(v)
        d["nodeid"] = self.nodeid
        return d

    @classmethod
    def from_json(cls, c: dict) -> CaseRecord:
        return cls(
            model=str(c["model"]),
            dataset=str(c["dataset"]),
            protocol=str(c["protocol"]),
            status=str(c.get("status", "passed")),
            seconds=float(c.get("seconds") or 0.0),
            metrics={str(k): float(v) for k, v in (c.get("metrics") or {}).items() if v is not None},
            reason=c.get("reason"),
            details=dict(c.get("details") or {}),
            nodeid=c.get("nodeid"),
            n={str(k): int(v) for k, v in (c.get("n") or {}).items() if v is not None},
            ci={
                str(k): [float(v[0]), float(v[1])]
                for k, v in (c.get("ci") or {}).items()
                if isinstance(v, (list, tuple)) and len(v) == 2 and None not in v
            },
            ci_method={str(k): str(v) for k, v in (c.get("ci_method") or {}).items()},
        )


def write_text_atomic(path: Path, text: str) -> None:
    def write(f: Any) -> None:
        f.write(text)

    atomic_write(path, write)


# ------------------------------------------------------------------------- matrix + GELO


def headline(protocol: str) -> str:
    info = PROTOCOLS.get(protocol)
    return info.headline if info else "acc1"


def is_general(protocol: str) -> bool:
    """A general-vision protocol: GELO applies (the registry's ``gelo`` flag)."""
    info = PROTOCOLS.get(protocol)
    return info is not None and info.gelo


def resolvable(rec: CaseRecord, metric: str) -> bool:
    """False where the data cannot resolve the operating point (IJB: FAR target below
    1 / impostor pairs, ``details[metric]["resolvable"]``)."""
    d = rec.details.get(metric) if rec.details else None
    return not (isinstance(d, dict) and d.get("resolvable") is False)


def matrix(
    records: Iterable[CaseRecord],
    protocol: str,
    metric: str | None = None,
    statuses: tuple[str, ...] = ("passed",),
) -> dict[str, dict[str, float]]:
    """{model: {dataset: value}} of one metric over the cases of one protocol whose status is
    in ``statuses`` (default: passed) and whose operating point is resolvable."""
    metric = metric or headline(protocol)
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if r.protocol == protocol and r.status in statuses and metric in r.metrics and resolvable(r, metric):
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
    if not mb or ma is None:
        return None
    return ma / mb


def gelo_table(records: list[CaseRecord], baselines: dict[str, str | None]) -> dict[str, dict[str, float]]:
    """{protocol: {model: GELO}} for the general-vision protocols (zero-shot, linear probe):
    GELO measures kept general ability; biometric protocols get a change in points instead."""
    out: dict[str, dict[str, float]] = {}
    for protocol in sorted({r.protocol for r in records}):
        if not is_general(protocol) or lower_is_better(headline(protocol)):
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
    """Records keyed by (protocol, model, dataset), persisted to ``results.json``.

    ``update`` appends the record to the journal and rewrites ``results.json`` when the last
    full write is older than ``flush_interval`` seconds; ``flush`` forces the full write.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        run: dict[str, Any],
        baselines: dict[str, str | None] | None = None,
        *,
        flush_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(path) if path is not None else None
        self.run = run
        self.baselines = baselines or {}
        self.records: dict[tuple[str, str, str], CaseRecord] = {}
        self.model_loads: dict[str, int] = {}
        self.flush_interval = flush_interval
        self.clock = clock
        self._last_full = -math.inf
        self._dirty = False
        self._journal_fd: int | None = None
        self.write_error: str | None = None  # the last failed write (None once one succeeds)
        self.writes = 0  # full rewrites done (for tests and perf checks)
        self._lines: dict[tuple[str, str, str], str] = {}  # each record's JSON, made once
        self._last_cost = 0.0  # seconds the last full write took

    @property
    def journal_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(JOURNAL_NAME)

    def add_pending(self, rec: CaseRecord) -> None:
        self.records.setdefault(rec.key, rec)

    def update(self, rec: CaseRecord) -> None:
        self.records[rec.key] = rec
        self._lines.pop(rec.key, None)
        self._dirty = True
        if rec.status != "not run":
            self._journal(rec)
        # at most every flush_interval, and never more than ~1/10 of the time in full writes
        wait = max(self.flush_interval, 10 * self._last_cost) if self.flush_interval > 0 else 0.0
        if self.clock() - self._last_full >= wait:
            self.flush()

    def count_load(self, model: str) -> None:
        self.model_loads[model] = self.model_loads.get(model, 0) + 1

    def to_json(self) -> dict:
        recs = list(self.records.values())
        run = dict(self.run)
        run["model_loads"] = dict(self.model_loads)
        return {"run": run, "cases": [r.to_json() for r in recs], "gelo": gelo_table(recs, self.baselines)}

    def _line(self, rec: CaseRecord) -> str:
        line = self._lines.get(rec.key)
        if line is None:
            line = json.dumps(_plain(rec.to_json()), separators=(",", ":"), ensure_ascii=False)
            if rec.status != "not run":
                self._lines[rec.key] = line
        return line

    def text(self) -> str:
        """results.json's text: one case per line (fast: each finished case is serialised
        once; the C encoder throughout)."""
        recs = list(self.records.values())
        run = dict(self.run)
        run["model_loads"] = dict(self.model_loads)
        cases = ",\n  ".join(self._line(r) for r in recs)
        return (
            '{\n"run": '
            + json.dumps(_plain(run), ensure_ascii=False)
            + ',\n"cases": [\n  '
            + cases
            + "\n],\n"
            + '"gelo": '
            + json.dumps(_plain(gelo_table(recs, self.baselines)))
            + "\n}\n"
        )

    # -- writing
    def _journal(self, rec: CaseRecord) -> None:
        jp = self.journal_path
        if jp is None:
            return
        line = (self._line(rec) + "\n").encode()
        try:
            if self._journal_fd is None:
                jp.parent.mkdir(parents=True, exist_ok=True)
                self._journal_fd = os.open(jp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            _write_all(self._journal_fd, line)
        except OSError as e:
            self.write_error = f"{jp}: {e.strerror or e}"

    def write(self) -> None:
        """Rewrite results.json now (kept for callers of the old name)."""
        self.flush()

    def flush(self) -> bool:
        """Rewrite ``results.json`` in full and empty the journal; False (and
        :attr:`write_error` set) when the file could not be written."""
        self._last_full = self.clock()
        if self.path is None:
            return True
        t0 = time.perf_counter()
        try:
            write_text_atomic(self.path, self.text())
        except OSError as e:
            self.write_error = f"{self.path}: {e.strerror or e}"
            return False
        self.writes += 1
        self._last_cost = time.perf_counter() - t0
        self._dirty = False
        self.write_error = None
        self._reset_journal()
        return True

    def _reset_journal(self) -> None:
        jp = self.journal_path
        if jp is None:
            return
        if self._journal_fd is not None:
            try:
                os.ftruncate(self._journal_fd, 0)
                return
            except OSError:
                os.close(self._journal_fd)
                self._journal_fd = None
        try:
            jp.unlink()
        except OSError:
            pass

    def close(self) -> bool:
        """Final write; the journal is removed once results.json holds everything."""
        ok = self.flush()
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        if ok and self.journal_path is not None:
            try:
                self.journal_path.unlink()
            except OSError:
                pass
        return ok


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _plain(x: Any) -> Any:
    """JSON-safe: NaN/inf become null (results.json must parse everywhere)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# ------------------------------------------------------------------------------ reading


@dataclass
class RunData:
    """An earlier run read back: its ``run`` block and records (journal replayed)."""

    path: Path
    run: dict[str, Any]
    records: list[CaseRecord]

    @property
    def is_paper(self) -> bool:
        """A file of published numbers (``run.suite`` like "paper reference", or
        ``run.reference`` true) rather than a measured run."""
        suite = str(self.run.get("suite") or "").lower()
        return bool(self.run.get("reference")) or ("paper" in suite and "reference" in suite)

    @property
    def label(self) -> str:
        return "paper" if self.is_paper else "baseline"

    def by_key(self) -> dict[tuple[str, str, str], CaseRecord]:
        return {r.key: r for r in self.records}


def load_run(path: str | os.PathLike, what: str = "--baseline") -> RunData:
    """Read a results.json completely (plus its journal, if a killed run left one)."""
    from harness.errors import HarnessError

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{what} {p}: file not found") from None
    except IsADirectoryError:
        raise HarnessError(f"{what} {p}: is a folder; expected a results.json file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"{what} {p}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise HarnessError(f"{what} {p}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise HarnessError(f"{what} {p}: expected a results.json with a 'cases' list")
    recs: dict[tuple[str, str, str], CaseRecord] = {}
    for i, c in enumerate(data["cases"]):
        try:
            r = CaseRecord.from_json(c)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise HarnessError(
                f"{what} {p}: cases[{i}] malformed ({e}); expected model, dataset, protocol and metrics"
            ) from None
        recs[r.key] = r
    jp = p.with_name(JOURNAL_NAME)
    if jp.is_file():
        for line in jp.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                r = CaseRecord.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # a line cut short by a kill
            recs[r.key] = r
    run: dict[str, Any] = data["run"] if isinstance(data.get("run"), dict) else {}
    return RunData(p, dict(run), list(recs.values()))


def load_results(path: str | os.PathLike) -> list[CaseRecord]:
    """Read an earlier run's records (for --baseline)."""
    return load_run(path).records


def __getattr__(name: str) -> Any:  # rendering moved to harness.report; old imports keep working
    if name in ("render_report", "protocol_table", "detail_table", "method_table", "MAD_COLUMNS"):
        from harness import report

        return getattr(report, name)
    raise AttributeError(name)
