"""Exports of a run: ``results.csv`` (long format) and CLIP_benchmark-shaped JSON files.

``results.csv``: one row per (case, metric) with columns :data:`CSV_COLUMNS`; ``n`` is the
case's main sample size (test images, pairs, or bona fide + attack samples), ``ci_low`` /
``ci_high`` its 95 % interval where one was computed; a case without metrics (skipped, error,
not run) gets one row with an empty metric so that its status is there too.

CLIP_benchmark JSON: ``clip_benchmark/<model>--<dataset>--<task>.json`` per zero-shot and
linear-probe case that produced metrics, with the keys its ``clip_benchmark eval`` writes
(``dataset``, ``model``, ``pretrained``, ``task`` = ``zeroshot_classification`` /
``linear_probe``, ``metrics`` with ``acc1``, ``acc5``, ``mean_per_class_recall``,
``language``), so that its ``clip_benchmark build`` and other readers of that output read ours.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.results import CaseRecord, write_text_atomic

CSV_COLUMNS = ("model", "dataset", "protocol", "metric", "value", "n", "ci_low", "ci_high", "status")
CLIP_BENCHMARK_TASKS = {"zeroshot": "zeroshot_classification", "linear_probe": "linear_probe"}
CLIP_BENCHMARK_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def main_n(rec: CaseRecord) -> int | None:
    """The sample size the headline metric is counted over."""
    n = rec.n or {}
    for k in ("images", "pairs"):
        if k in n:
            return int(n[k])
    if "bona_fide" in n and "attack" in n:
        return int(n["bona_fide"] + n["attack"])
    return None


def csv_text(records: Iterable[CaseRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        n = main_n(r)
        if not r.metrics:
            w.writerow([r.model, r.dataset, r.protocol, "", "", "" if n is None else n, "", "", r.status])
            continue
        for k, v in r.metrics.items():
            ci = r.ci.get(k)
            w.writerow(
                [
                    r.model,
                    r.dataset,
                    r.protocol,
                    k,
                    repr(float(v)),
                    "" if n is None else n,
                    "" if ci is None else repr(float(ci[0])),
                    "" if ci is None else repr(float(ci[1])),
                    r.status,
                ]
            )
    return buf.getvalue()


def clip_benchmark_records(records: Iterable[CaseRecord], run: dict[str, Any]) -> list[dict]:
    models = run.get("models") or {}
    out = []
    for r in records:
        task = CLIP_BENCHMARK_TASKS.get(r.protocol)
        if task is None or not r.metrics or r.status not in ("passed", "failed"):
            continue
        m = models.get(r.model) or {}
        out.append(
            {
                "dataset": r.dataset,
                "model": r.model,
                "pretrained": str(m.get("checkpoint") or m.get("pretrained") or ""),
                "task": task,
                "metrics": {k: float(r.metrics[k]) for k in CLIP_BENCHMARK_METRICS if k in r.metrics},
                "language": "en",
            }
        )
    return out


def write_exports(out_dir: str | Path, records: list[CaseRecord], run: dict[str, Any]) -> list[Path]:
    """Write results.csv and the CLIP_benchmark files; return the paths written."""
    out = Path(out_dir)
    written = [out / "results.csv"]
    write_text_atomic(out / "results.csv", csv_text(records))
    for d in clip_benchmark_records(records, run):
        name = f"{_SAFE.sub('_', d['model'])}--{_SAFE.sub('_', d['dataset'])}--{d['task']}.json"
        p = out / "clip_benchmark" / name
        write_text_atomic(p, json.dumps(d, indent=2) + "\n")
        written.append(p)
    return written
