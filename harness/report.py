"""report.md: the trade-off report, rendered from a results.json's content alone.

Everything a table needs (display names, base models, the suite's description, thresholds,
sample sizes, intervals) is in ``results.json``, so a report made at the end of a run and one
made later by ``tradeoff-bench-merge`` from the same cases are the same text.

Tables never hide a measured number: a case that failed its gate shows its value with ✗;
skipped, error, not run and not-resolvable cells have their own marks, defined in every
table's caption (:data:`MARKS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.protocols import PROTOCOLS, lower_is_better
from harness.results import STATUSES, CaseRecord, RunData, average, gelo, headline, is_general, resolvable

MARKS = {
    "failed": "✗",
    "error": "E",
    "skipped": "s",
    "not run": "·",
    "n/r": "n/r",
}
LEGEND = (
    "✗ failed (the measured value is shown beside it), E error, s skipped, · not run, "
    "n/r operating point not resolvable by the data (FAR target < 1 / impostor pairs), "
    "blank: the suite does not pair this model with this dataset"
)
WARNINGS_SHOWN = 20
DEMO_NOTE = (
    "**This is the embedded demo.** Its models are tiny (a small CLIP trained in "
    "seconds on scikit-learn's digits, and LoRA variants of it) and its data are "
    "synthetic: the numbers exercise the harness, they say nothing about real models."
)


@dataclass
class ReportOptions:
    show_ci: bool = False
    baseline: RunData | None = None
    max_drop: float | None = None
    plots: list[tuple[str, str]] = field(default_factory=list)  # (title, relative path)
    interrupted: bool = False
    write_error: str | None = None
    title: str | None = None


# ------------------------------------------------------------------------------ helpers


def _pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}"


def _pts(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.2f}"


def _esc(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _arrow(metric: str) -> str:
    return "↓" if lower_is_better(metric) else "↑"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _caption(text: str) -> str:
    return f"_{text}_"


def labels(
    run: dict[str, Any], records: Iterable[CaseRecord]
) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """(model id -> label, dataset id -> label, model id -> base model) in suite order;
    ids seen only in the records follow, in record order."""
    models: dict[str, str] = {}
    datasets: dict[str, str] = {}
    bases: dict[str, str | None] = {}
    for mid, m in (run.get("models") or {}).items():
        models[mid] = str((m or {}).get("label") or mid)
        bases[mid] = (m or {}).get("baseline")
    for did, d in (run.get("datasets") or {}).items():
        datasets[did] = str((d or {}).get("label") or did)
    for r in records:
        models.setdefault(r.model, r.model)
        bases.setdefault(r.model, None)
        datasets.setdefault(r.dataset, r.dataset)
    return models, datasets, bases


class Cells:
    """The cells of one protocol's matrix: value and status per (model, dataset)."""

    def __init__(self, records: Iterable[CaseRecord], protocol: str, metric: str):
        self.metric = metric
        self.recs: dict[tuple[str, str], CaseRecord] = {}
        for r in records:
            if r.protocol == protocol:
                self.recs[(r.model, r.dataset)] = r

    def value(self, model: str, dataset: str, measured: bool = True) -> float | None:
        """The number of a cell: passed (and, with ``measured``, failed) cases with the metric,
        resolvable."""
        r = self.recs.get((model, dataset))
        ok = ("passed", "failed") if measured else ("passed",)
        if r is None or r.status not in ok or self.metric not in r.metrics or not resolvable(r, self.metric):
            return None
        return float(r.metrics[self.metric])

    def text(self, model: str, dataset: str, show_ci: bool, bold: bool = False) -> str:
        r = self.recs.get((model, dataset))
        if r is None:
            return ""
        has = self.metric in r.metrics
        if has and not resolvable(r, self.metric):
            return MARKS["n/r"]
        if r.status in ("passed", "failed") and has:
            s = _pct(r.metrics[self.metric])
            if bold:
                s = f"**{s}**"
            if show_ci and self.metric in r.ci:
                lo, hi = r.ci[self.metric]
                s += f" [{_pct(lo, 1)}, {_pct(hi, 1)}]"
            return s + (" " + MARKS["failed"] if r.status == "failed" else "")
        return MARKS.get(r.status, r.status)


def _avg_rule(rows: dict[str, dict[str, float]], ds: list[str]) -> tuple[str, list[str] | None]:
    """(header, datasets to average over): all shown datasets when every row has them all,
    else the datasets every row has (counted in the header), else None (each row's own
    datasets, counted in each cell)."""
    if not rows:
        return "Avg", ds
    common = [d for d in ds if all(d in row for row in rows.values())]
    if len(common) == len(ds):
        return "Avg", ds
    if common:
        return f"Avg ({len(common)} of {len(ds)})", common
    return "Avg (own)", None


def protocol_table(
    records: list[CaseRecord],
    protocol: str,
    models: dict[str, str],
    datasets: dict[str, str],
    baselines: dict[str, str | None],
    metric: str | None = None,
    show_ci: bool = False,
) -> str | None:
    """Models x datasets in percent with Avg, and GELO (general-vision protocols) or the change
    against the base model in points (biometric); the best passed value per column in bold;
    failed, skipped, error, not run and n/r cells marked (see :data:`MARKS`)."""
    metric = metric or headline(protocol)
    cells = Cells(records, protocol, metric)
    if not cells.recs:
        return None
    have_d = {k[1] for k in cells.recs}
    have_m = {k[0] for k in cells.recs}
    ds = [d for d in datasets if d in have_d]
    ms = [m for m in models if m in have_m]
    lower = lower_is_better(metric)
    measured = {m: {d: v for d in ds if (v := cells.value(m, d)) is not None} for m in ms}
    passed = {m: {d: v for d in ds if (v := cells.value(m, d, measured=False)) is not None} for m in ms}
    rows_with_values = {m: row for m, row in measured.items() if row}
    avg_head, avg_over = _avg_rule(rows_with_values, ds)
    best: dict[str, float] = {}
    for d in ds:
        vals = [passed[m][d] for m in ms if d in passed[m]]
        if vals:
            best[d] = min(vals) if lower else max(vals)
    avgs: dict[str, float] = {}
    for m in ms:
        if measured[m] and all(measured[m].get(d) == passed[m].get(d) for d in measured[m]):
            a = average(measured[m], avg_over)
            if a is not None:
                avgs[m] = a
    best_avg = (min(avgs.values()) if lower else max(avgs.values())) if avgs else None
    general = is_general(protocol)
    rows = []
    for m in ms:
        row = [_esc(models[m])]
        for d in ds:
            b = d in passed[m] and math.isclose(passed[m][d], best[d], rel_tol=0, abs_tol=1e-12)
            row.append(cells.text(m, d, show_ci, bold=b))
        a = average(measured[m], avg_over)
        if a is None:
            row.append("–")
        else:
            s = _pct(a)
            if m in avgs and best_avg is not None and math.isclose(avgs[m], best_avg, abs_tol=1e-12):
                s = f"**{s}**"
            if m not in avgs:
                s += " " + MARKS["failed"]  # includes a failed case's number
            if avg_over is None:
                s += f" ({len(measured[m])})"
            row.append(s)
        base = baselines.get(m)
        if general:
            g = gelo(passed, m, base) if base else None
            row.append("–" if g is None else f"{g:.3f}")
        else:
            row.append(_pts(delta(passed, m, base)) if base else "–")
        rows.append(row)
    last = "GELO" if general else "Δ vs base (pts)"
    headers = ["Model"] + [_esc(datasets[d]) for d in ds] + [avg_head, last]
    return _table(headers, rows)


def delta(mat: dict[str, dict[str, float]], model: str, base: str | None) -> float | None:
    """Model's mean minus its base model's mean over the datasets both have (a fraction;
    reports show points)."""
    if not base:
        return None
    a, b = mat.get(model, {}), mat.get(base, {})
    common = [d for d in a if d in b]
    if not common:
        return None
    ma, mb = average(a, common), average(b, common)
    return None if ma is None or mb is None else ma - mb


def methods_text(meth: dict[str, str]) -> str:
    """``{metric: method}`` as "a, b: method; c: other" (metrics sharing a method together)."""
    by: dict[str, list[str]] = {}
    for k, v in meth.items():
        by.setdefault(v, []).append(k)
    return "; ".join(f"{', '.join(ks)}: {v}" for v, ks in by.items())


def _values_of(records: list[CaseRecord], key: str) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        v = r.details.get(key) if r.details else None
        if v is not None:
            seen[str(v)] = None
    return list(seen)


def protocol_caption(
    records: list[CaseRecord], protocol: str, metric: str, avg_head: str, show_ci: bool = False
) -> str:
    arrow = "↓ lower is better" if lower_is_better(metric) else "↑ higher is better"
    parts = [f"{metric} in %, {arrow}."]
    if avg_head == "Avg":
        parts.append("Avg: mean over the datasets shown (every row has all of them).")
    elif avg_head.startswith("Avg ("):
        parts.append(
            f"{avg_head}: mean over the datasets every row has; "
            "'own': each row over its own datasets, their count in brackets."
        )
    if is_general(protocol):
        parts.append(
            "GELO: the model's mean over the datasets it shares with its base model "
            "divided by the base model's mean over the same (1.000 = no loss of "
            "general ability)."
        )
    else:
        parts.append(
            "Δ vs base: the model's mean minus its base model's mean over the datasets "
            "both have, in percentage points (GELO is defined for general-vision "
            "protocols only)."
        )
    parts.append("**Bold**: best passed value per column.")
    if show_ci:
        parts.append("[a, b]: 95 % confidence interval (method below).")
    if "metric_rule" in PROTOCOLS[protocol].options:  # the attack protocols
        src = _values_of([r for r in records if r.protocol == protocol], "threshold_source")
        rule = _values_of([r for r in records if r.protocol == protocol], "metric_rule")
        parts.append(
            "Threshold: "
            + (", ".join(src) if src else "not recorded")
            + "; metric rule: "
            + (", ".join(rule) if rule else "iso (default)")
            + "."
        )
    parts.append("Marks: " + LEGEND + ".")
    return " ".join(parts)


def detail_table(
    records: list[CaseRecord],
    protocol: str,
    dataset: str,
    models: dict[str, str],
    metrics: list[str] | None = None,
    show_ci: bool = False,
) -> str | None:
    """Models x metrics of one biometric dataset, in percent, with arrows (every status shown)."""
    recs = {r.model: r for r in records if r.protocol == protocol and r.dataset == dataset}
    if not any(r.metrics for r in recs.values()):
        return None
    if metrics is None:
        seen: dict[str, None] = {}
        for r in recs.values():
            for k in r.metrics:
                if "[" not in k:
                    seen[k] = None
        metrics = list(seen)
    rows = []
    for k_model, label in models.items():
        if k_model not in recs:
            continue
        r = recs[k_model]
        row = [_esc(label)]
        for k in metrics:
            c = Cells([r], protocol, k)
            best = _best(recs.values(), k)
            v = c.value(r.model, dataset, measured=False)
            row.append(
                c.text(
                    r.model,
                    dataset,
                    show_ci,
                    bold=v is not None and best is not None and math.isclose(v, best, abs_tol=1e-12),
                )
            )
        rows.append(row)
    headers = ["Model"] + [f"{_esc(k)} {_arrow(k)}" for k in metrics]
    return _table(headers, rows)


def _best(recs: Iterable[CaseRecord], metric: str) -> float | None:
    vals = [
        r.metrics[metric]
        for r in recs
        if r.status == "passed" and metric in r.metrics and resolvable(r, metric)
    ]
    if not vals:
        return None
    return min(vals) if lower_is_better(metric) else max(vals)


MAD_COLUMNS = (
    "eer",
    "apcer@bpcer=0.01",
    "apcer@bpcer=0.1",
    "apcer@bpcer=0.2",
    "bpcer@apcer=0.01",
    "bpcer@apcer=0.1",
    "bpcer@apcer=0.2",
)


def method_table(
    records: list[CaseRecord],
    protocol: str,
    dataset: str,
    models: dict[str, str],
    metrics: tuple[str, ...] = MAD_COLUMNS,
) -> str | None:
    """Per attack method (``metric[method]`` keys) and their average, per model: the study's
    MAD table (EER, APCER@BPCER 1/10/20 %, BPCER@APCER 1/10/20 %)."""
    by_model = {
        r.model: r
        for r in records
        if r.protocol == protocol and r.dataset == dataset and r.status in ("passed", "failed")
    }
    rows = []
    for m, label in models.items():
        rec = by_model.get(m)
        if rec is None:
            continue
        methods = sorted(
            {k.split("[", 1)[1][:-1] for k in rec.metrics if "[" in k and k.split("[", 1)[0] == metrics[0]}
        )
        if not methods:
            continue
        mark = " " + MARKS["failed"] if rec.status == "failed" else ""
        for meth in methods:
            rows.append([_esc(label), _esc(meth)] + [_pct(rec.metrics.get(f"{k}[{meth}]")) for k in metrics])
        rows.append([_esc(label) + mark, "average"] + [_pct(rec.metrics.get(k)) for k in metrics])
    if not rows:
        return None
    headers = ["Model", "Method"] + [f"{_esc(k)} {_arrow(k)}" for k in metrics]
    return _table(headers, rows)


# ------------------------------------------------------------------------ summary table


def summary_table(
    records: list[CaseRecord], models: dict[str, str], baselines: dict[str, str | None]
) -> str | None:
    """One row per fine-tuned model (a model with a base model): the change of each biometric
    protocol's headline metric against its base (points; in-domain and cross-task), and the
    zero-shot and linear-probe GELO."""
    tuned = [m for m in models if baselines.get(m)]
    if not tuned:
        return None
    present = [p for p in PROTOCOLS if any(r.protocol == p for r in records)]
    bio = [p for p in present if not is_general(p)]
    gen = [p for p in present if is_general(p)]
    mats = {p: _passed_matrix(records, p) for p in present}
    rows = []
    for m in tuned:
        base = baselines[m]
        row = [_esc(models[m]), _esc(models.get(str(base), str(base)))]
        for p in bio:
            d = delta(mats[p], m, base)
            row.append(MARKS["n/r"] if d is None and _unresolved(records, p, (m, str(base))) else _pts(d))
        for p in gen:
            g = gelo(mats[p], m, str(base))
            row.append("–" if g is None else f"{g:.3f}")
        rows.append(row)
    headers = (
        ["Model", "Base"]
        + [f"{p} Δ {headline(p)} {_arrow(headline(p))} (pts)" for p in bio]
        + [f"{p} GELO ↑" for p in gen]
    )
    return _table(headers, rows)


def _unresolved(records: list[CaseRecord], protocol: str, models: tuple[str, ...]) -> bool:
    """Whether a passed case of ``protocol`` for one of ``models`` has its headline metric but
    the data cannot resolve it (a Δ is then missing for that reason, not for a failure)."""
    h = headline(protocol)
    return any(
        r.protocol == protocol
        and r.model in models
        and r.status == "passed"
        and h in r.metrics
        and not resolvable(r, h)
        for r in records
    )


def _passed_matrix(records: list[CaseRecord], protocol: str) -> dict[str, dict[str, float]]:
    from harness.results import matrix

    return matrix(records, protocol)


SUMMARY_CAPTION = (
    "One row per fine-tuned model. Δ columns: the change of the protocol's headline "
    "metric against the base model, in percentage points, over the datasets both "
    "have (in-domain for the task the model was tuned for, cross-task for the "
    "others; the arrow says which direction is better: a negative Δ on a ↓ metric "
    "is a gain). GELO: general-vision mean relative to the base model (1.000 = no "
    "loss). – : no passed case to compare. n/r: the headline's operating point is not "
    "resolvable by the data (FAR target < 1 / impostor pairs; the protocol's table has the "
    "other metrics). Passed cases only."
)


# --------------------------------------------------------------------- baseline compare


def comparison_table(
    records: list[CaseRecord],
    base: RunData,
    models: dict[str, str],
    datasets: dict[str, str],
    max_drop: float | None,
) -> str | None:
    """Each case's headline metric (and any other metric both have that moved outside
    ``max_drop``) against the baseline or paper file."""
    old = base.by_key()
    word = base.label
    rows = []
    for r in records:
        o = old.get(r.key)
        if o is None or not r.metrics:
            continue
        keys = [k for k in r.metrics if k in o.metrics and "[" not in k]
        head = headline(r.protocol)
        for k in keys:
            now, was = r.metrics[k], o.metrics[k]
            change = now - was
            loss = change if lower_is_better(k) else -change
            if max_drop is None:
                verdict = "–"
            elif 100 * loss > max_drop + 1e-9:
                verdict = f"outside (> {max_drop:g})"
            else:
                verdict = "within"
            if k != head and not verdict.startswith("outside"):
                continue
            if not resolvable(r, k):
                continue
            name = (
                f"{_esc(r.protocol)}[{_esc(models.get(r.model, r.model))}-"
                f"{_esc(datasets.get(r.dataset, r.dataset))}]"
            )
            rows.append([name, f"{_esc(k)} {_arrow(k)}", _pct(was), _pct(now), _pts(change), verdict])
    if not rows:
        return None
    return _table(
        [
            "Case",
            "Metric",
            word,
            "now",
            "Δ (pts)",
            "loss vs --max-drop" if max_drop is not None else "(no --max-drop)",
        ],
        rows,
    )


# ----------------------------------------------------------------------------- report


def _sizes_table(records: list[CaseRecord], datasets: dict[str, str]) -> str | None:
    protos: dict[str, set[str]] = {}
    first_n: dict[str, dict[str, int]] = {}
    for r in records:
        protos.setdefault(r.dataset, set()).add(r.protocol)
        if r.n and r.dataset not in first_n:
            first_n[r.dataset] = r.n
    rows = [
        [
            _esc(datasets[d]),
            ", ".join(sorted(protos[d])),
            ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in first_n[d].items()),
        ]
        for d in datasets
        if d in first_n
    ]
    if not rows:
        return None
    return _table(["Dataset", "Protocols", "Test set (n)"], rows)


def render_run(
    data: RunData | None, records: list[CaseRecord], run: dict[str, Any], opts: ReportOptions | None = None
) -> str:
    """The report of one run (or of several merged) from results.json content."""
    opts = opts or ReportOptions()
    models, datasets, baselines = labels(run, records)
    records = canonical_order(records, models, datasets)
    title = opts.title or f"Trade-off report: suite {run.get('suite', '?')}"
    parts = [f"# {title}", ""]
    desc = run.get("suite_description")
    if desc:
        parts += [_esc(desc), ""]
    if run.get("demo"):
        parts += [DEMO_NOTE, ""]
    meta = [
        f"{k}: {run[k]}"
        for k in ("suite", "started", "device", "torch", "open_clip", "harness", "git_commit")
        if run.get(k)
    ]
    if meta:
        parts += [", ".join(meta), ""]
    if opts.interrupted or run.get("interrupted"):
        parts += ["**The run was interrupted**: cases marked · did not run.", ""]
    if opts.write_error:
        parts += [f"**Results could not be written**: {_esc(opts.write_error)}", ""]

    st = summary_table(records, models, baselines)
    if st:
        parts += ["## Trade-off at a glance", "", st, "", _caption(SUMMARY_CAPTION), ""]
    if opts.baseline is not None:
        ct = comparison_table(records, opts.baseline, models, datasets, opts.max_drop)
        word = "paper" if opts.baseline.is_paper else "baseline"
        parts += [f"## Against the {word} ({_esc(opts.baseline.path.name)})", ""]
        parts += [ct if ct else f"_no case in common with the {word} file_", ""]
        cap = (
            f"{word}: the number in {_esc(str(opts.baseline.path))}; now: this run; Δ = now − "
            f"{word} in percentage points; headline metric of each case, plus any metric "
            "outside --max-drop."
        )
        if opts.baseline.is_paper:
            cap += " Paper numbers are published values, not measured by this harness."
        parts += [_caption(cap), ""]
    sizes = _sizes_table(records, datasets)
    if sizes:
        parts += ["## Test sets", "", sizes, ""]

    by_p: dict[str, list[CaseRecord]] = {}
    by_pd: dict[tuple[str, str], list[CaseRecord]] = {}
    for r in records:
        by_p.setdefault(r.protocol, []).append(r)
        by_pd.setdefault((r.protocol, r.dataset), []).append(r)
    for p in [p for p in PROTOCOLS if p in by_p]:
        metric = headline(p)
        t = protocol_table(by_p[p], p, models, datasets, baselines, show_ci=opts.show_ci)
        parts.append(f"## {p} — {metric} {_arrow(metric)} (%)")
        parts.append("")
        if t:
            cells = Cells(by_p[p], p, metric)
            have_d = {k[1] for k in cells.recs}
            ds = [d for d in datasets if d in have_d]
            rows = {m: {d: 0.0 for d in ds if cells.value(m, d) is not None} for m in models}
            head, _ = _avg_rule({m: r for m, r in rows.items() if r}, ds)
            parts += [t, "", _caption(protocol_caption(by_p[p], p, metric, head, opts.show_ci)), ""]
        else:
            parts += ["_no cases_", ""]
        if PROTOCOLS[p].detail_tables:
            for d in datasets:
                sub = by_pd.get((p, d), [])
                dt = detail_table(sub, p, d, models, show_ci=opts.show_ci) if sub else None
                if dt:
                    cap = "All metrics in %; arrows: ↑ higher / ↓ lower is better; **bold**: best passed."
                    ns = next((r.n for r in sub if r.n), None)
                    if ns:
                        cap += " n: " + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in ns.items()) + "."
                    if "metric_rule" in PROTOCOLS[p].options:
                        src = _values_of(sub, "threshold_source")
                        rule = _values_of(sub, "metric_rule")
                        cap += (
                            " Threshold: "
                            + (", ".join(src) or "not recorded")
                            + "; metric rule: "
                            + (", ".join(rule) or "iso (default)")
                            + "."
                        )
                    meth = next((r.ci_method for r in sub if r.ci_method), None)
                    if meth and opts.show_ci:
                        cap += " Intervals: " + methods_text(meth) + "."
                    cap += " Marks: " + LEGEND + "."
                    parts += [f"### {p} — {_esc(datasets[d])} (%)", "", dt, "", _caption(cap), ""]
                mt = method_table(sub, p, d, models) if PROTOCOLS[p].per_method_table and sub else None
                if mt:
                    parts += [f"### {p} — {_esc(datasets[d])} per method (%)", "", mt, ""]
        else:
            meth = next((r.ci_method for r in by_p[p] if r.ci_method), None)
            if meth and opts.show_ci:
                parts += [_caption("Intervals: " + methods_text(meth) + "."), ""]

    if opts.plots:
        parts += ["## Figures", ""]
        for title_, rel in opts.plots:
            parts += [f"![{_esc(title_)}]({rel})", ""]

    parts += _status_section(records, models, datasets)
    parts += _warnings_section(records, run)
    return "\n".join(parts).rstrip() + "\n"


def canonical_order(
    records: Iterable[CaseRecord], models: dict[str, str], datasets: dict[str, str]
) -> list[CaseRecord]:
    """Records in suite order (model, dataset, protocol): the same text whatever order the
    cases finished in, or the files they were merged from."""
    om = {m: i for i, m in enumerate(models)}
    od = {d: i for i, d in enumerate(datasets)}
    op = {p: i for i, p in enumerate(PROTOCOLS)}
    return sorted(
        records,
        key=lambda r: (
            om.get(r.model, len(om)),
            r.model,
            od.get(r.dataset, len(od)),
            r.dataset,
            op.get(r.protocol, len(op)),
            r.protocol,
        ),
    )


def _case_name(r: CaseRecord) -> str:
    return f"{r.protocol}[{_esc(r.model)}-{_esc(r.dataset)}]"


def _status_section(records, models, datasets) -> list[str]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    out = ["## Cases", "", "Cases: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if s in counts)]
    problems = [r for r in records if r.status in ("failed", "error", "skipped", "not run")]
    if problems:
        out += ["", "| case | status | reason |", "|---|---|---|"]
        for r in problems:
            reason = _esc(
                (r.reason or "").splitlines()[0]
                if r.reason
                else ("did not run" if r.status == "not run" else "")
            )
            out.append(f"| {_case_name(r)} | {r.status} | {reason} |")
    out.append("")
    return out


def collect_warnings(records: list[CaseRecord], run: dict[str, Any]) -> list[str]:
    """Session warnings (run["warnings"]: cache recomputations, ...) then, per case, its
    ``details["warnings"]`` and dropped unreadable images (``details["dropped_images"]``)."""
    out: dict[str, None] = {}
    for w in run.get("warnings") or []:
        out[str(w)] = None
    for r in records:
        for w in (r.details or {}).get("warnings") or []:
            out[f"{_case_name(r)}: {w}"] = None
        for pth in (r.details or {}).get("dropped_images") or []:
            out[f"{r.dataset}: unreadable image dropped: {pth}"] = None
    return list(out)


def _warnings_section(records, run) -> list[str]:
    ws = collect_warnings(records, run)
    if not ws:
        return []
    out = ["## Warnings", ""]
    out += [f"- {_esc(w)}" for w in ws[:WARNINGS_SHOWN]]
    if len(ws) > WARNINGS_SHOWN:
        out.append(f"- … and {len(ws) - WARNINGS_SHOWN} more (results.json has them all)")
    out.append("")
    return out


def render_report(
    records: list[CaseRecord],
    models: dict[str, str],
    datasets: dict[str, str],
    baselines: dict[str, str | None],
    title: str = "Trade-off report",
    run: dict[str, Any] | None = None,
    **opts: Any,
) -> str:
    """Compatibility wrapper: the report from explicit display names."""
    run = dict(run or {})
    run["models"] = {m: {"label": lab, "baseline": baselines.get(m)} for m, lab in models.items()}
    run["datasets"] = {d: {"label": lab} for d, lab in datasets.items()}
    return render_run(None, records, run, ReportOptions(title=title, **opts))
