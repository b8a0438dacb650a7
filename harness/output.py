"""A run's outputs, pytest-free: the results dir, the baseline read before anything is
written, the store, raw scores, and what is written at the end (report.md, results.csv,
CLIP_benchmark JSON, figures).

The plugin makes one :class:`RunOutputs` in the main process at configure time and calls
:meth:`RunOutputs.finish` at session end; :mod:`harness.merge` calls :func:`write_outputs` with
records read back from several results.json files, so both make the same report.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.results import CaseRecord, ResultStore, RunData, write_text_atomic
from harness.scores import SCORES_DIR, TMP_SCORES_DIR, ScoreSet, load_scores, score_file

DEMO_SUITE_NAMES = ("demo",)


def suite_meta(suite: Any) -> dict[str, Any]:
    """What the report needs from the suite, stored in results.json's ``run`` block: the
    description, display names, base models, weights, dataset types, and whether it is the
    embedded demo."""
    return {
        "suite_description": getattr(suite, "description", "") or "",
        "demo": str(getattr(suite, "name", "")) in DEMO_SUITE_NAMES,
        "models": {
            m.id: {
                "label": m.display,
                "baseline": m.baseline,
                "arch": m.arch,
                "pretrained": m.pretrained,
                "checkpoint": m.checkpoint,
            }
            for m in suite.models.values()
        },
        "datasets": {
            d.id: {"label": d.display, "type": d.type, "protocols": list(d.protocols)}
            for d in suite.datasets.values()
        },
    }


@dataclass
class Outputs:
    report: str
    paths: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def write_outputs(
    out_dir: str | os.PathLike,
    records: list[CaseRecord],
    run: dict[str, Any],
    *,
    scores_root: Path | None = None,
    show_ci: bool = False,
    baseline: RunData | None = None,
    max_drop: float | None = None,
    interrupted: bool = False,
    write_error: str | None = None,
    plots: bool = True,
) -> Outputs:
    """Figures, report.md, results.csv and CLIP_benchmark files of ``records`` in ``out_dir``.

    A file that cannot be written is reported in ``Outputs.errors``, never raised."""
    from harness.export import write_exports
    from harness.report import ReportOptions, render_run

    out = Path(out_dir)
    errors: list[str] = []
    paths: list[Path] = []
    figures: list[tuple[str, str]] = []
    if plots:

        def scores_of(rec: CaseRecord) -> ScoreSet | None:
            if scores_root is None:
                return None
            p = score_file(scores_root, rec.protocol, rec.model, rec.dataset)
            try:
                return load_scores(p) if p.is_file() else None
            except (OSError, ValueError) as e:
                errors.append(f"{p}: unreadable scores ({e})")
                return None

        try:
            from harness.plots import make_plots

            figures = make_plots(out, records, run, scores_of)
        except OSError as e:
            errors.append(f"{out}: figures not written ({e.strerror or e})")
        except ImportError as e:
            errors.append(f"figures not drawn: {e} (pip install matplotlib)")
    opts = ReportOptions(
        show_ci=show_ci,
        baseline=baseline,
        max_drop=max_drop,
        plots=figures,
        interrupted=interrupted,
        write_error=write_error,
    )
    from harness.report import canonical_order, labels

    models, datasets, _ = labels(run, records)
    records = canonical_order(records, models, datasets)
    text = render_run(None, records, run, opts)
    try:
        write_text_atomic(out / "report.md", text)
        paths.append(out / "report.md")
        paths += write_exports(out, records, run)
    except OSError as e:
        errors.append(f"{out}: {e.strerror or e}")
    return Outputs(text, paths, errors)


def encode_baseline(m: dict[tuple[str, str, str], dict[str, float]]) -> str:
    """The baseline metrics as a JSON string (sent to xdist workers in ``workerinput``)."""
    import json

    return json.dumps([[list(k), v] for k, v in m.items()])


def decode_baseline(s: str | None) -> dict[tuple[str, str, str], dict[str, float]]:
    import json

    if not s:
        return {}
    return {(k[0], k[1], k[2]): {str(a): float(b) for a, b in v.items()} for k, v in json.loads(s)}


def record_extras(
    protocol: str,
    model: str,
    dataset: str,
    metrics: dict[str, float],
    details: dict[str, Any],
    scores: ScoreSet | None,
    scores_root: str | os.PathLike | None,
) -> dict[str, Any]:
    """What ``case.record`` adds to a case: ``{"n", "ci", "ci_method"}`` and, with scores,
    their file under ``scores_root`` (a failed write becomes ``details["warnings"]``)."""
    from harness.intervals import case_statistics

    try:
        n, ci, method = case_statistics(protocol, metrics, details, scores)
    except (ValueError, FloatingPointError, ZeroDivisionError) as e:  # never fails the case
        from harness.intervals import sample_sizes

        n, ci, method = sample_sizes(protocol, details, scores), {}, {}
        details.setdefault("warnings", []).append(f"no confidence intervals: {e}")
    out: dict[str, Any] = {"n": n, "ci": ci, "ci_method": method}
    if scores is not None and scores_root is not None:
        from harness.scores import save_scores

        p = score_file(scores_root, protocol, model, dataset)
        try:
            save_scores(p, scores)
        except OSError as e:
            details.setdefault("warnings", []).append(f"scores not written to {p}: {e.strerror or e}")
    return out


BENCHMARK_TABLE_OPTIONS = (
    "--benchmark-verbose",
    "--benchmark-columns",
    "--benchmark-sort",
    "--benchmark-group-by",
    "--benchmark-histogram",
    "--benchmark-name",
)


def quiet_benchmark_table(config: Any) -> None:
    """pytest-benchmark prints a table of every case's single-round timing after the report;
    hide it (timings still go to --benchmark-json) unless a table option was given.  Called at
    session finish of a run with harness cases only, so other test runs keep their tables."""
    args = [str(a) for a in getattr(config.invocation_params, "args", ())]
    if any(a.startswith(BENCHMARK_TABLE_OPTIONS) for a in args):
        return
    if hasattr(config.option, "benchmark_quiet"):
        config.option.benchmark_quiet = True
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None:
        bs.quiet = True


class RunOutputs:
    """The results of one pytest session (main process)."""

    def __init__(
        self,
        results_dir: str | os.PathLike,
        run: dict[str, Any],
        baselines: dict[str, str | None],
        *,
        baseline: RunData | None = None,
        max_drop: float | None = None,
        save_scores: bool = False,
        show_ci: bool = False,
        flush_interval: float = 2.0,
    ):
        self.results_dir = Path(results_dir)
        # ``baseline``: read completely (gates.read_baseline_run) before anything is written, since
        # --baseline may be this very folder's results.json
        self.baseline = baseline
        self.max_drop = max_drop
        self.save_scores = save_scores
        self.show_ci = show_ci
        self.store = ResultStore(
            self.results_dir / "results.json", run, baselines, flush_interval=flush_interval
        )
        self.outputs: Outputs | None = None
        self.warnings: list[str] = []

    @property
    def scores_root(self) -> Path:
        return self.results_dir / (SCORES_DIR if self.save_scores else TMP_SCORES_DIR)

    def not_run(self) -> list[CaseRecord]:
        return [r for r in self.store.records.values() if r.status == "not run"]

    def finish(self, interrupted: bool = False) -> Outputs:
        run = self.store.run
        if interrupted:
            run["interrupted"] = True
        if self.warnings:
            run["warnings"] = list(dict.fromkeys([*(run.get("warnings") or []), *self.warnings]))
        self.store.close()
        records = list(self.store.records.values())
        self.outputs = write_outputs(
            self.results_dir,
            records,
            run,
            scores_root=self.scores_root,
            show_ci=self.show_ci,
            baseline=self.baseline,
            max_drop=self.max_drop,
            interrupted=interrupted,
            write_error=self.store.write_error,
        )
        if self.store.write_error:  # one more try once the report is out (space may be back)
            self.store.close()
        if not self.save_scores:
            shutil.rmtree(self.results_dir / TMP_SCORES_DIR, ignore_errors=True)
        return self.outputs

    def terminal_lines(self) -> list[str]:
        """The closing lines: where results are, or why they are not there."""
        out: list[str] = []
        if self.store.write_error:
            out.append(
                f"RESULTS NOT WRITTEN: {self.store.write_error} — every finished case "
                "is in the report below/above; free space and rerun to keep them"
            )
        for e in self.outputs.errors if self.outputs else []:
            out.append(f"not written: {e}")
        out.append(f"results: {self.results_dir / 'results.json'}")
        out.append(f"report:  {self.results_dir / 'report.md'}")
        if self.save_scores:
            out.append(f"scores:  {self.results_dir / SCORES_DIR}")
        return out

    def failed(self, interrupted: bool) -> str | None:
        """Why the session must exit non-zero although no case failed, or None."""
        if self.store.write_error:
            return f"results could not be written ({self.store.write_error})"
        nr = self.not_run()
        if nr and not interrupted:
            return f"{len(nr)} collected case(s) did not run"
        return None
