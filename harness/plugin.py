"""pytest plugin: options, markers, parametrization, grouping, results, report and gates.

Registered through the ``pytest11`` entry point.  It imports neither torch nor open_clip: those
load with the first model, so ``pytest --help`` and ``--collect-only`` stay fast.

A benchmark is a test function named ``test_<protocol>`` that requests the ``harness_case``
fixture; the plugin parametrizes it with one case per model x dataset of the suite whose
dataset lists that protocol (and, where the dataset says ``models``/``exclude_models``, only
the models it chooses), with ids ``model-dataset`` and a marker per protocol plus its group
(``general`` or ``biometric``), all from :data:`harness.protocols.PROTOCOLS`.  A benchmark
function with no case in the suite is deselected.

Mistakes in the suite or the options stop the run in ``pytest_configure`` (or at collection
when the suite is the default one), before any model loads: one line, exit status 4.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from harness.cases import CaseSpec
from harness.devices import check_device, resolve_device
from harness.errors import HarnessError
from harness.gates import baseline_metrics, check_options, read_baseline_run, validate_gates
from harness.protocols import PROTOCOLS, markers
from harness.results import CaseRecord, ResultStore
from harness.suite import Suite, load_suite, resolve_suite, suites_dirs

if TYPE_CHECKING:
    from harness.output import RunOutputs
    from harness.results import RunData

FIXTURES_MODULE = "tradeoff_bench_fixtures"  # the repository's fixtures/ folder, installed
CASE_PROP = "harness_case"  # user_properties: {"model", "dataset", "protocol"}
METRICS_PROP = "harness_metrics"  # user_properties: {metric: float}
DETAILS_PROP = "harness_details"  # user_properties: {key: plain value}
LOAD_PROP = "harness_model_load"  # user_properties: model id, on the case that loaded it
_NO_CASES = "no-cases"  # the id of a benchmark function's stand-in when it has none
STATS_PROP = "harness_stats"  # user_properties: {"n", "ci", "ci_method"} (harness.output)

__all__ = ["CaseSpec", "resolve_device", "HarnessSession"]  # from harness.cases, harness.devices


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("tradeoff-bench", "tradeoff-bench benchmark harness")
    g.addoption(
        "--suite",
        default="demo",
        metavar="NAME|PATH",
        help="suite file; a bare name resolves to benchmarks/suites/NAME.toml (default: demo)",
    )
    g.addoption(
        "--results-dir",
        default=None,
        metavar="DIR",
        help="write DIR/results.json and DIR/report.md (default: results/<timestamp>)",
    )
    g.addoption(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="feature cache folder (default: $HARNESS_CACHE, else ~/.cache/tradeoff-bench)",
    )
    g.addoption("--refresh-features", action="store_true", default=False, help="recompute cached features")
    g.addoption(
        "--lock-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up waiting for another run's feature-cache lock after SECONDS without "
        "progress (default: 300)",
    )
    g.addoption(
        "--chunk-rows",
        type=int,
        default=2048,
        metavar="N",
        help="rows per committed chunk of a split in the feature cache, rounded down to whole "
        "batches: the unit of resuming and of sharing a split among xdist workers (default: 2048)",
    )
    g.addoption(
        "--no-split-sharing",
        action="store_true",
        default=False,
        help="under -n N with fewer models than workers, do not let every worker help extract "
        "the large splits (each split is then extracted by the worker that runs its cases)",
    )
    g.addoption(
        "--device",
        default=None,
        metavar="cpu|cuda|cuda:N|mps",
        help="device for the models (default: cuda, then mps, then cpu)",
    )
    g.addoption(
        "--autocast",
        nargs="?",
        const="bf16",
        default=None,
        choices=("bf16", "fp16"),
        metavar="bf16|fp16",
        help="autocast on CUDA: bf16 (a bare --autocast), or fp16 as CLIP_benchmark's amp; "
        "CPU always runs fp32 (CPU autocast changes results). A bare --autocast "
        "goes after the paths (or write --autocast=bf16)",
    )
    g.addoption(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images per forward pass (default: 128 on CPU, 256 on GPU)",
    )
    g.addoption(
        "--loader-workers",
        type=int,
        default=None,
        metavar="N",
        help="DataLoader worker processes (default: automatic)",
    )
    g.addoption(
        "--require-data",
        action="store_true",
        default=False,
        help="fail, instead of skip, cases whose data or weights are absent",
    )
    g.addoption(
        "--baseline",
        default=None,
        metavar="OLD/results.json",
        help="compare against an earlier run's results (with --max-drop)",
    )
    g.addoption(
        "--max-drop",
        type=float,
        default=None,
        metavar="POINTS",
        help="fail cases that lost more than POINTS percentage points against --baseline",
    )
    g.addoption(
        "--engine",
        default="inprocess",
        choices=("inprocess", "ray"),
        help="where the feature stage runs: this process (default) or Ray Data "
        "(pip install 'tradeoff-bench[ray]')",
    )
    g.addoption(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="--engine ray: join this Ray cluster (default: start or join a local Ray)",
    )
    g.addoption(
        "--shard",
        default=None,
        metavar="I/N",
        help="run a deterministic share I of N of the selected cases (grouped by model); "
        "join the shards' results with tradeoff-bench-merge",
    )
    g.addoption(
        "--save-scores",
        action="store_true",
        default=False,
        help="keep raw scores: DIR/scores/<protocol>/<model>--<dataset>.npz",
    )
    g.addoption(
        "--ci",
        action="store_true",
        default=False,
        help="show 95%% confidence intervals in the report's tables",
    )


BASELINE_RUN = pytest.StashKey["RunData"]()


def pytest_configure(config: pytest.Config) -> None:
    for name, desc in markers().items():
        config.addinivalue_line("markers", f"{name}: {desc}")
    try:
        check_options(config.getoption("--baseline"), config.getoption("--max-drop"))
        if config.getoption("--baseline") and not hasattr(config, "workerinput"):
            # read once, here, before anything is written; workers get its metrics in workerinput
            config.stash[BASELINE_RUN] = read_baseline_run(config.getoption("--baseline"))
        check_device(config.getoption("--device"))
        _check_scale_out(config)
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None
    session = HarnessSession(config)
    config.pluginmanager.register(session, "tradeoff-bench-session")
    import importlib

    # installed under the project's own name: PyPI has an unrelated package named "fixtures"
    harness_fixtures = importlib.import_module(FIXTURES_MODULE)
    config.pluginmanager.register(harness_fixtures, "tradeoff-bench-fixtures")
    if any(str(a).startswith("--suite") for a in config.invocation_params.args):
        session.suite  # noqa: B018 - an explicitly chosen suite is validated up front (exit 4)
    session.configure_outputs()


def _check_scale_out(config: pytest.Config) -> None:
    """--shard, --engine ray and --ray-address: usage errors before anything runs."""
    shard = config.getoption("--shard")
    if shard:
        from harness.shard import claim_results_dir, parse_shard

        i, n = parse_shard(shard)
        rd = config.getoption("--results-dir")
        if rd and not hasattr(config, "workerinput"):
            claim_results_dir(Path(rd).expanduser(), i, n)
    if config.getoption("--engine") == "ray":
        import importlib.util

        from harness.ray_engine import RayUnavailable, check_address

        if importlib.util.find_spec("ray") is None:
            raise RayUnavailable(
                "--engine ray needs Ray: pip install 'tradeoff-bench[ray]' (or pip install 'ray[data]')"
            )
        if config.getoption("--ray-address"):
            check_address(config.getoption("--ray-address"))
    elif config.getoption("--ray-address"):
        raise HarnessError("--ray-address needs --engine ray")


def feature_cache_dir(config: pytest.Config) -> Path:
    opt = config.getoption("--feature-cache")
    if opt:
        return Path(opt).expanduser().resolve()
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "tradeoff-bench"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _reason(report: pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # skip: (path, lineno, message)
        msg = str(lr[2])
        return msg[len("Skipped: ") :] if msg.startswith("Skipped: ") else msg
    crash = getattr(lr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return crash.message.strip()
    text = report.longreprtext.strip() if hasattr(report, "longreprtext") else str(lr)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("E ")]
    return (errs[-1][1:].strip() if errs else (lines[-1] if lines else "")).strip()


class HarnessSession:
    """Per-process state of a harness run (the main process owns the results store)."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self._suite: Suite | None = None
        self._report: str | None = None  # report.md's text, made once at session finish
        self.store: ResultStore | None = None
        self.started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.started_epoch = time.time()  # workers: --refresh-features spares what this run wrote
        self.cache_dir = feature_cache_dir(config)
        # The embedded demo builds its models and data here on first use: ${HARNESS_DEMO} in a
        # suite, unless the environment sets it (not written to os.environ, so that processes
        # started from this one pick their own default from their own --feature-cache).
        self.demo_dir = Path(os.environ.get("HARNESS_DEMO") or self.cache_dir / "demo-v1")
        self.results_dir: Path | None = None
        self._cases: dict[str, CaseSpec] | None = None  # "test_<protocol>[<id>]" -> case
        self.outputs: RunOutputs | None = None  # main process
        self.baseline: RunData | None = None  # --baseline (main process)
        self.baseline_metrics: dict = {}  # {(protocol, model, dataset): metrics}, every process
        self.scores_root: Path | None = None  # where case.record writes raw scores

    def configure_outputs(self) -> None:
        """Results dir and --baseline, at configure time: the baseline is read completely
        before this run writes anything (it may be DIR/results.json itself)."""
        from harness import output

        if self.is_worker:
            # set by pytest-xdist on worker processes; pytest.Config does not declare it
            wi: dict[str, Any] = getattr(self.config, "workerinput")  # noqa: B009
            self.results_dir = Path(wi["harness_results_dir"]) if wi.get("harness_results_dir") else None
            self.scores_root = Path(wi["harness_scores_root"]) if wi.get("harness_scores_root") else None
            self.baseline_metrics = output.decode_baseline(wi.get("harness_baseline"))
            return
        opt = self.config.getoption("--results-dir")
        if opt:
            self.results_dir = Path(opt).expanduser().resolve()
        else:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.results_dir = Path(self.config.invocation_params.dir) / "results" / stamp
        from harness.scores import SCORES_DIR, TMP_SCORES_DIR

        keep = self.config.getoption("--save-scores")
        self.scores_root = self.results_dir / (SCORES_DIR if keep else TMP_SCORES_DIR)
        self.baseline = self.config.stash.get(BASELINE_RUN, None)
        self.baseline_metrics = baseline_metrics(self.baseline)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        from harness import output

        node.workerinput["harness_results_dir"] = str(self.results_dir or "")
        node.workerinput["harness_scores_root"] = str(self.scores_root or "")
        node.workerinput["harness_baseline"] = output.encode_baseline(self.baseline_metrics)
        node.workerinput["harness_started"] = self.started_epoch

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """A worker's feature-stage figures (rows decoded, seconds) and the models it built
        outside any case (helping with other workers' splits) go into results.json."""
        out = getattr(node, "workeroutput", None) or {}
        stage = out.get("harness_stage")
        if not stage or self.config.option.collectonly:
            return
        store = self._ensure_store()
        for mid in stage.get("model_loads", []):
            store.count_load(str(mid))
        wid = str(getattr(node, "workerinput", {}).get("workerid", getattr(node.gateway, "id", "?")))
        figures = {k: v for k, v in stage.items() if k != "model_loads"}
        store.run.setdefault("feature_stage", {})[wid] = figures

    # ------------------------------------------------------------------ the suite
    @property
    def suite(self) -> Suite:
        if self._suite is None:
            try:
                path = resolve_suite(
                    self.config.getoption("--suite"), suites_dirs(Path(self.config.rootpath))
                )
                suite = load_suite(path, {"HARNESS_DEMO": str(self.demo_dir)})
                validate_gates(suite)
            except HarnessError as e:
                raise pytest.UsageError(str(e)) from None
            self._check_ids(suite)
            self._suite = suite
        return self._suite

    @staticmethod
    def _check_ids(suite: Suite) -> None:
        seen: dict[str, tuple[str, str]] = {}
        for m in suite.models:
            for d in suite.datasets:
                cid = f"{m}-{d}"
                if cid in seen and seen[cid] != (m, d):
                    raise pytest.UsageError(
                        f"{suite.path}: case id {cid!r} is ambiguous (model {seen[cid][0]!r} + "
                        f"dataset {seen[cid][1]!r} vs model {m!r} + dataset {d!r}); rename one"
                    )
                seen[cid] = (m, d)

    @property
    def cases(self) -> dict[str, CaseSpec]:
        """Every case of the suite by the last part of its node id, ``test_<protocol>[<id>]``:
        the xdist controller, which collects nothing itself, looks node ids up here."""
        if self._cases is None:
            self._cases = {
                f"test_{p}[{CaseSpec(p, m, d).id}]": CaseSpec(p, m, d) for p, m, d in self.suite.cases()
            }
        return self._cases

    def case_of_nodeid(self, nodeid: str) -> CaseSpec | None:
        """The case a harness node id stands for (a lookup, no parsing), else None."""
        return self.cases.get(nodeid.rsplit("::", 1)[-1])

    # ------------------------------------------------------------ parametrization
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "harness_case" not in metafunc.fixturenames:
            return
        func = metafunc.function.__name__
        protocol = func[len("test_") :]
        if protocol not in PROTOCOLS:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: a harness benchmark must be named test_<protocol>, "
                f"protocol one of {', '.join(PROTOCOLS)}"
            )
        group = PROTOCOLS[protocol].group
        marks = [getattr(pytest.mark, protocol), getattr(pytest.mark, group)]
        params = [
            pytest.param(CaseSpec(p, m, d), id=CaseSpec(p, m, d).id, marks=marks)
            for p, m, d in self.suite.cases()
            if p == protocol
        ]
        if not params:  # deselected at collection (not "skipped: got empty parameter set")
            params = [pytest.param(None, id=_NO_CASES, marks=marks)]
        metafunc.parametrize("harness_case", params, indirect=True)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items: list[pytest.Item]) -> None:
        """Stable sort of the harness cases by model (suite order), so that each model loads
        once whatever order other plugins left; other tests keep their places.  Benchmark
        functions without a case in the suite are deselected."""
        empty = [it for it in items if _is_no_cases(it)]
        if empty:
            items[:] = [it for it in items if not _is_no_cases(it)]
            config.hook.pytest_deselected(items=empty)
        shard = config.getoption("--shard")
        if shard:
            from harness.shard import assign, parse_shard

            i_shard, n_shard = parse_shard(shard)
            mine = assign([s.key for it in items if (s := _case_of_item(it)) is not None], n_shard)
            other = [it for it in items if (s := _case_of_item(it)) is not None and mine[s.key] != i_shard]
            if other:
                keep = set(map(id, other))
                items[:] = [it for it in items if id(it) not in keep]
                config.hook.pytest_deselected(items=other)
        specs = {i: spec for i, it in enumerate(items) if (spec := _case_of_item(it)) is not None}
        if not specs:
            return
        order = {m: i for i, m in enumerate(self.suite.models)}
        positions = list(specs)
        ranked = sorted(positions, key=lambda i: order.get(specs[i].model, len(order)))
        cases = [(items[j], specs[j]) for j in ranked]
        for i, (it, spec) in zip(positions, cases):
            items[i] = it
            it.user_properties.append(
                (CASE_PROP, {"model": spec.model, "dataset": spec.dataset, "protocol": spec.protocol})
            )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config, log):
        from harness._xdist import ModelScheduling

        return ModelScheduling(config, log, self)

    # ------------------------------------------------------------------- results
    def _ensure_store(self) -> ResultStore:
        if self.store is None:
            from harness.output import RunOutputs, suite_meta

            rd = self.results_dir
            assert rd is not None  # set by configure_outputs
            suite = self.suite
            run = {
                "suite": suite.name,
                "suite_file": str(suite.path),
                "started": self.started,
                "harness": _version("tradeoff-bench"),
                "torch": _version("torch"),
                "open_clip": _version("open_clip_torch"),
                "device": self.config.getoption("--device") or "auto",
                "engine": self.config.getoption("--engine"),
                "shard": self.config.getoption("--shard"),
                "git_commit": _git_commit(Path(self.config.rootpath)),
                **suite_meta(suite),
            }
            self.outputs = RunOutputs(
                rd,
                run,
                {m.id: m.baseline for m in suite.models.values()},
                baseline=self.baseline,
                max_drop=self.config.getoption("--max-drop"),
                save_scores=self.config.getoption("--save-scores"),
                show_ci=self.config.getoption("--ci"),
            )
            self.store = self.outputs.store
        return self.store

    def _add_pending(self, cases: list[tuple[str, CaseSpec]]) -> None:
        if self.config.option.collectonly or not cases:
            return
        store = self._ensure_store()
        for n, s in cases:
            store.add_pending(CaseRecord(s.model, s.dataset, s.protocol, nodeid=n))
        store.write()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.is_worker and not self._under_xdist():
            self._add_pending(
                [(it.nodeid, spec) for it in session.items if (spec := _case_of_item(it)) is not None]
            )

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self._add_pending([(n, spec) for n in ids if (spec := self.case_of_nodeid(n)) is not None])

    def _under_xdist(self) -> bool:
        return bool(getattr(self.config.option, "numprocesses", None)) or bool(
            getattr(self.config.option, "dist", "no") not in ("no", None)
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker:
            return
        props: dict[str, Any] = dict((k, v) for k, v in report.user_properties if isinstance(k, str))
        meta = props.get(CASE_PROP)
        if meta is None:
            return
        store = self._ensure_store()
        key = (meta["protocol"], meta["model"], meta["dataset"])
        rec = store.records.get(key) or CaseRecord(meta["model"], meta["dataset"], meta["protocol"])
        rec.nodeid = report.nodeid
        if report.when == "setup":
            rec.seconds = 0.0
            rec.status, rec.reason, rec.metrics, rec.details = "not run", None, {}, {}
        rec.seconds = round(rec.seconds + float(report.duration), 3)
        if report.when == "teardown":  # the last report holds every property of the case
            for k, v in report.user_properties:
                if k == LOAD_PROP:
                    store.count_load(cast(str, v))  # a model id (fixtures: LOAD_PROP)
        if report.when == "setup":
            if report.skipped:
                rec.status, rec.reason = "skipped", _reason(report)
            elif report.failed:
                rec.status, rec.reason = "error", _reason(report)
        elif report.when == "call":
            rec.metrics = dict(props.get(METRICS_PROP) or {})
            rec.details = dict(props.get(DETAILS_PROP) or {})
            stats = props.get(STATS_PROP) or {}
            rec.n, rec.ci, rec.ci_method = (dict(stats.get(k) or {}) for k in ("n", "ci", "ci_method"))
            if report.passed:
                rec.status, rec.reason = "passed", None
            elif report.skipped:
                rec.status, rec.reason = "skipped", _reason(report)
            else:
                rec.status, rec.reason = "failed", _reason(report)
        elif report.when == "teardown" and report.failed and rec.status == "passed":
            rec.status, rec.reason = "error", _reason(report)
        store.update(rec)

    # --------------------------------------------------------------------- report
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker or self.store is None:
            return
        assert self.outputs is not None  # made together with self.store
        if self.store.run.get("device") == "auto" and "torch" in sys.modules:
            self.store.run["device"] = resolve_device(None)  # what the cases resolved too
        interrupted = int(exitstatus) == int(pytest.ExitCode.INTERRUPTED) or bool(
            session.shouldstop or session.shouldfail
        )
        out = self.outputs.finish(interrupted=interrupted)
        self._report = out.report
        from harness.output import quiet_benchmark_table

        quiet_benchmark_table(self.config)  # the run ends on the report, not a timing table
        why = self.outputs.failed(interrupted)
        if why and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter, exitstatus, config) -> None:
        if self.is_worker or self.store is None or self.outputs is None:
            return
        terminalreporter.section("tradeoff-bench")
        for line in (self._report or "").splitlines():
            terminalreporter.write_line(line)
        for line in self.outputs.terminal_lines():
            terminalreporter.write_line(line)
        interrupted = self.store.run.get("interrupted", False)
        why = self.outputs.failed(bool(interrupted))
        if why:
            terminalreporter.write_line(f"tradeoff-bench: exit status non-zero: {why}", red=True)


def _is_no_cases(item: pytest.Item) -> bool:
    cs = getattr(item, "callspec", None)
    return cs is not None and "harness_case" in cs.params and cs.params["harness_case"] is None


def _case_of_item(item: pytest.Item) -> CaseSpec | None:
    cs = getattr(item, "callspec", None)
    if cs is None:
        return None
    spec = cs.params.get("harness_case")
    return spec if isinstance(spec, CaseSpec) else None
