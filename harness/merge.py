"""Merge several runs' results.json into one results folder and report.

    tradeoff-bench-merge OUT_DIR RUN1/results.json RUN2/results.json ... [--ci]
                         [--baseline OLD/results.json [--max-drop POINTS]]
    python -m harness.merge ...   (the same)

For the same cases the merged report.md is the one a single run would have written (only the
``started`` time may differ).  A case in several files: a finished record wins over ``not run``;
between finished ones the later file wins.  Raw scores found beside an input
(``RUN/scores/``, written with ``--save-scores``) are copied into ``OUT_DIR/scores/`` and the
ROC/DET/TAR-FAR curves are drawn from them; without them, only the matrix figures are drawn.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results import CaseRecord, ResultStore, RunData, load_run
from harness.scores import SCORES_DIR


def merge_runs(runs: Sequence[RunData]) -> tuple[dict[str, Any], list[CaseRecord]]:
    """(run block, records) of several runs, in first-seen order."""
    run: dict[str, Any] = {}
    records: dict[tuple[str, str, str], CaseRecord] = {}
    models: dict[str, Any] = {}
    datasets: dict[str, Any] = {}
    loads: dict[str, int] = {}
    warnings: dict[str, None] = {}
    for rd in runs:
        for k, v in rd.run.items():
            if k in ("models", "datasets", "model_loads", "warnings", "interrupted"):
                continue
            if k == "started" and run.get("started"):
                run["started"] = min(str(run["started"]), str(v))
                continue
            run.setdefault(k, v)
        for mid, m in (rd.run.get("models") or {}).items():
            models.setdefault(mid, m)
        for did, d in (rd.run.get("datasets") or {}).items():
            datasets.setdefault(did, d)
        for mid, n in (rd.run.get("model_loads") or {}).items():
            loads[mid] = loads.get(mid, 0) + int(n)
        for w in rd.run.get("warnings") or []:
            warnings[str(w)] = None
        if rd.run.get("interrupted"):
            run["interrupted"] = True
        for r in rd.records:
            old = records.get(r.key)
            if old is None or r.status != "not run" or old.status == "not run":
                records[r.key] = r
    if models:
        run["models"] = models
    if datasets:
        run["datasets"] = datasets
    if warnings:
        run["warnings"] = list(warnings)
    order_m = {m: i for i, m in enumerate(models)}
    recs = list(records.values())
    # suite order of models (a single run records cases in its collection order, model-major)
    recs.sort(key=lambda r: order_m.get(r.model, len(order_m)))
    run["_model_loads"] = loads
    return run, recs


def merge(
    out_dir: str | Path,
    inputs: Sequence[str | Path],
    *,
    show_ci: bool = False,
    baseline: str | None = None,
    max_drop: float | None = None,
) -> Path:
    from harness.output import write_outputs

    base = load_run(baseline) if baseline else None  # before anything is written
    runs = [load_run(p, what="merge input") for p in inputs]
    run, records = merge_runs(runs)
    loads = run.pop("_model_loads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(r.path.resolve().parent == out.resolve() for r in runs):
        raise HarnessError(f"{out}: is the folder of an input; merge into a new folder")
    have_scores = False
    for rd in runs:
        src = rd.path.parent / SCORES_DIR
        if src.is_dir():
            shutil.copytree(src, out / SCORES_DIR, dirs_exist_ok=True)
            have_scores = True
    baselines = {m: (v or {}).get("baseline") for m, v in (run.get("models") or {}).items()}
    store = ResultStore(out / "results.json", run, baselines)
    for r in records:
        store.records[r.key] = r
    store.model_loads = loads
    if not store.close():
        raise HarnessError(f"cannot write {store.write_error}")
    res = write_outputs(
        out,
        records,
        store.run,
        scores_root=out / SCORES_DIR if have_scores else None,
        show_ci=show_ci,
        baseline=base,
        max_drop=max_drop,
        interrupted=bool(run.get("interrupted")),
    )
    if res.errors:
        raise HarnessError("; ".join(res.errors))
    return out / "report.md"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tradeoff-bench-merge",
        description="Merge several runs' results.json (e.g. shards) into one results folder: "
        "results.json, report.md, results.csv, CLIP_benchmark JSON and figures.",
    )
    ap.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created)")
    ap.add_argument("inputs", nargs="+", metavar="RESULTS_JSON", help="results.json of each run")
    ap.add_argument("--ci", action="store_true", help="show 95 %% intervals in the tables")
    ap.add_argument(
        "--baseline",
        metavar="OLD/results.json",
        help="compare against an earlier run (or a paper reference file)",
    )
    ap.add_argument(
        "--max-drop",
        type=float,
        metavar="POINTS",
        help="mark metrics that lost more than POINTS percentage points vs --baseline",
    )
    a = ap.parse_args(argv)
    try:
        report = merge(a.out_dir, a.inputs, show_ci=a.ci, baseline=a.baseline, max_drop=a.max_drop)
    except HarnessError as e:
        print(f"tradeoff-bench-merge: {e}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
