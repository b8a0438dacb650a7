"""The plugin end to end under pytester: grouping and one load per model (also shuffled and
under xdist), skip reasons, --require-data, gates, --max-drop, results gathered from workers,
and an interrupted run's partial results.json."""

import json
import shutil
from pathlib import Path

import pytest

from tiny_clip import make_digits_imagefolder, make_tiny_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    make_tiny_clip(root / "tiny-a", seed=0)
    make_tiny_clip(root / "tiny-b", seed=1)
    make_digits_imagefolder(root / "digits")
    make_digits_imagefolder(root / "digits2", n_train=3, n_test=2)
    return root


def suite_text(assets, extra="", digits2_root=None):
    return f"""
[models.alpha]
arch = "local-dir:{assets / 'tiny-a'}"

[models.beta]
arch = "local-dir:{assets / 'tiny-b'}"
baseline = "alpha"

[datasets.digits]
type = "classification"
format = "imagefolder"
root = "{assets / 'digits'}"
prompts = "mnist"
protocols = ["zeroshot", "linear_probe"]

[datasets.digits2]
type = "classification"
format = "imagefolder"
root = "{digits2_root or (assets / 'digits2')}"
prompts = "mnist"
protocols = ["zeroshot", "linear_probe"]
{extra}
"""


@pytest.fixture
def project(pytester, assets):
    shutil.copy(REPO / "benchmarks" / "test_general.py", pytester.path / "test_general.py")

    def run(*args, suite=None, conftest=None, subprocess=False):
        (pytester.path / "suite.toml").write_text(suite or suite_text(assets))
        if conftest:
            (pytester.path / "conftest.py").write_text(conftest)
        runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
        res = runner(
            "test_general.py", "--suite", str(pytester.path / "suite.toml"),
            "--results-dir", str(pytester.path / "out"),
            "--feature-cache", str(pytester.path / "cache"), "-p", "no:cacheprovider", *args)
        path = pytester.path / "out" / "results.json"
        data = json.loads(path.read_text()) if path.exists() else None
        return res, data

    run.out = pytester.path / "out"
    return run


def statuses(data):
    return {(c["protocol"], c["model"], c["dataset"]): c["status"] for c in data["cases"]}


SHUFFLE = """
import random
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    random.Random(7).shuffle(items)   # what pytest-randomly does
"""


def test_grouped_single_load_per_model_shuffled_and_report(project, pytester):
    res, data = project("-v", conftest=SHUFFLE)
    assert res.ret == 0, res.stdout.str()
    assert data["run"]["model_loads"] == {"alpha": 1, "beta": 1}
    assert len(data["cases"]) == 8 and set(statuses(data).values()) == {"passed"}
    # cases ran grouped by model: all alpha cases before all beta cases
    order = [ln.split("::")[1].split(" ")[0] for ln in res.outlines if "::test_" in ln and "PASSED" in ln]
    models = [o.split("[")[1].split("-")[0] for o in order]
    assert models == sorted(models, key=["alpha", "beta"].index), order
    for c in data["cases"]:
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in c["metrics"].values())
        assert set(c["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall"}
    assert set(data["gelo"]) == {"zeroshot", "linear_probe"} and "beta" in data["gelo"]["zeroshot"]
    z = {(c["model"], c["dataset"]): c["metrics"]["acc1"] for c in data["cases"] if c["protocol"] == "zeroshot"}
    expected = ((z["beta", "digits"] + z["beta", "digits2"]) / (z["alpha", "digits"] + z["alpha", "digits2"]))
    assert data["gelo"]["zeroshot"]["beta"] == pytest.approx(expected)
    report = (pytester.path / "out" / "report.md").read_text()
    assert "## zeroshot — acc1 ↑ (%)" in report and "| Avg" in report.replace("|   Avg", "| Avg")
    assert "tradeoff-bench" in res.stdout.str() and "## linear_probe" in res.stdout.str()
    # a second run reads features and text classifiers from the cache: no network is built
    res2, data2 = project()
    assert res2.ret == 0
    assert data2["run"]["model_loads"] == {}
    assert [c["metrics"] for c in data2["cases"]] == [c["metrics"] for c in data["cases"]]


def test_markers_and_k_select(project):
    res, data = project("-m", "linear_probe", "-k", "beta")
    assert res.ret == 0
    assert set(statuses(data)) == {("linear_probe", "beta", "digits"), ("linear_probe", "beta", "digits2")}
    res, _ = project("-m", "biometric")
    assert res.ret == 5  # everything deselected


def test_xdist_gathers_results_and_loads_each_model_once(project):
    pytest.importorskip("xdist")
    res, data = project("-n", "2", conftest=SHUFFLE, subprocess=True)
    assert res.ret == 0, res.stdout.str()
    assert data["run"]["model_loads"] == {"alpha": 1, "beta": 1}
    assert len(data["cases"]) == 8 and set(statuses(data).values()) == {"passed"}


def test_skip_reasons_and_require_data(project, assets, monkeypatch):
    monkeypatch.delenv("TB_NOT_SET", raising=False)
    suite = suite_text(assets, digits2_root="${TB_NOT_SET}/digits2").replace(
        f'root = "{assets / "digits"}"', f'root = "{assets / "absent"}"')
    res, data = project(suite=suite)
    assert res.ret == 0  # all skipped is not a failure
    reasons = {c["dataset"]: c["reason"] for c in data["cases"]}
    assert set(statuses(data).values()) == {"skipped"}
    assert "${TB_NOT_SET}" in reasons["digits2"] and "not set" in reasons["digits2"]
    assert str(assets / "absent") in reasons["digits"]
    assert data["run"]["model_loads"] == {}  # nothing loaded for absent data
    res, data = project("--require-data", suite=suite)
    assert res.ret == 1
    assert set(statuses(data).values()) == {"error"}
    assert all("--require-data" in c["reason"] for c in data["cases"])


def test_gates_pass_and_fail_without_traceback(project, assets):
    gates = """
[[gates]]
protocol = "zeroshot"
model = "alpha"
dataset = "digits"
metric = "acc1"
min = 0.0

[[gates]]
protocol = "linear_probe"
model = "beta"
metric = "acc1"
max = 0.0
min = 1.0
"""
    # min 100 % and max 0 %: no value passes both, so both beta probe cases fail, whatever acc1 is
    res, data = project(suite=suite_text(assets, gates))
    st = statuses(data)
    lp = {c["dataset"]: c for c in data["cases"] if c["protocol"] == "linear_probe" and c["model"] == "beta"}
    assert res.ret == 1
    assert st[("zeroshot", "alpha", "digits")] == "passed"
    assert st[("linear_probe", "alpha", "digits")] == "passed"  # the gate names model beta only
    assert set(lp) == {"digits", "digits2"}
    for d, c in lp.items():
        v = c["metrics"]["acc1"]
        assert c["status"] == "failed"
        above = f"acc1 {100 * v:.1f}% > max 0.0% (linear_probe beta/{d})"
        below = f"acc1 {100 * v:.1f}% < min 100.0% (linear_probe beta/{d})"
        assert (above in c["reason"]) == (v > 0.0) and (below in c["reason"]) == (v < 1.0)
    out = res.stdout.str()
    assert "Traceback" not in out and "def test_linear_probe" not in out


def test_max_drop_against_baseline(project, pytester):
    res, data = project("-m", "zeroshot")
    assert res.ret == 0
    old = json.loads((pytester.path / "out" / "results.json").read_text())
    for c in old["cases"]:
        c["metrics"]["acc1"] = min(1.0, c["metrics"]["acc1"] + 0.05)  # pretend we were 5 points better
    (pytester.path / "old.json").write_text(json.dumps(old))
    res, data = project("-m", "zeroshot", "--baseline", str(pytester.path / "old.json"), "--max-drop", "4")
    assert res.ret == 1
    assert all(c["status"] == "failed" and "acc1 lost 5.00 points" in c["reason"] for c in data["cases"]
               if c["metrics"]["acc1"] <= 0.95)
    res, data = project("-m", "zeroshot", "--baseline", str(pytester.path / "old.json"), "--max-drop", "6")
    assert res.ret == 0


def test_interrupted_run_keeps_finished_cases(project):
    kill = """
import os

seen = []

def pytest_runtest_logreport(report):
    if report.when == "teardown":
        seen.append(report.nodeid)
        if len(seen) == 3:
            os._exit(3)   # killed: no session finish, no report
"""
    res, data = project(conftest=kill, subprocess=True)
    assert res.ret == 3
    from harness.results import load_run  # results.json + the journal of finished cases

    st = [r.status for r in load_run(project.out / "results.json").records]
    assert st.count("passed") == 3 and st.count("not run") == 5


def test_bad_suite_is_a_usage_error(project, assets):
    res, _ = project(suite=suite_text(assets).replace('baseline = "alpha"', 'baseline = "gamma"'))
    assert res.ret == 4
    err = res.stderr.str()
    assert "[models.beta] baseline: 'gamma' names no model" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1


def test_unreadable_images_fail_only_their_cases_with_one_line(project, assets, tmp_path):
    bad = tmp_path / "digits-bad"
    shutil.copytree(assets / "digits2", bad)
    victim = sorted((bad / "test" / "3").iterdir())[0]
    victim.write_bytes(b"this is no png")
    res, data = project("-m", "zeroshot", suite=suite_text(assets, digits2_root=bad))
    assert res.ret == 1
    by = {(c["model"], c["dataset"]): c for c in data["cases"]}
    for m in ("alpha", "beta"):
        assert by[m, "digits"]["status"] == "passed"
        c = by[m, "digits2"]
        assert c["status"] == "failed"
        assert "1 of 20 images unreadable" in c["reason"] and str(victim) in c["reason"]
    assert "Traceback" not in res.stdout.str()


def _one_line_usage_error(res, expected):
    assert res.ret == 4, res.stdout.str() + res.stderr.str()
    err = [ln for ln in res.stderr.str().splitlines() if ln.strip()]
    assert len(err) == 1 and expected in err[0], err
    assert "Traceback" not in res.stderr.str()


MISTAKES = [
    ('format = "imagefolder"\nroot = "{digits}"', 'format = "imagefoldr"\nroot = "{digits}"',
     "[datasets.digits] format: unknown format 'imagefoldr' (did you mean 'imagefolder'?)"),
    ('type = "classification"\nformat = "imagefolder"\nroot = "{digits}"\nprompts = "mnist"\n'
     'protocols = ["zeroshot", "linear_probe"]',
     'type = "mad"\nformat = "cifar10"\nroot = "{digits}"\nprotocols = ["mad"]',
     "[datasets.digits] format: format 'cifar10' does not fit type = 'mad'"),
]


@pytest.mark.parametrize("old, new, expected", MISTAKES)
def test_suite_mistakes_stop_before_any_model_loads(project, assets, old, new, expected):
    digits = assets / "digits"
    text = suite_text(assets).replace(old.format(digits=digits), new.format(digits=digits), 1)
    assert text != suite_text(assets)
    res, data = project(suite=text)
    _one_line_usage_error(res, expected)
    assert data is None  # nothing ran, nothing written


def test_gate_on_a_metric_the_protocol_does_not_produce(project, assets):
    gate = '\n[[gates]]\nprotocol = "zeroshot"\nmetric = "eer"\nmax = 0.5\n'
    res, data = project(suite=suite_text(assets, gate))
    _one_line_usage_error(res, "[gates[0]] metric: 'eer' is not produced by zeroshot; expected one of acc1")
    assert data is None
    # without protocol: fine when some protocol of its datasets produces it
    gate = '\n[[gates]]\ndataset = "digits"\nmetric = "acc5"\nmin = 0.0\n'
    res, data = project("-m", "zeroshot", "-k", "alpha", suite=suite_text(assets, gate))
    assert res.ret == 0, res.stdout.str()


def test_option_mistakes_are_usage_errors(project, pytester, tmp_path):
    good = tmp_path / "old" / "results.json"
    good.parent.mkdir()
    good.write_text(json.dumps({"cases": []}))
    (tmp_path / "notes.txt").write_text("not json")
    cases = [
        (("--max-drop", "1"), "--max-drop 1 needs --baseline"),
        (("--baseline", str(good)), "needs --max-drop POINTS"),
        (("--baseline", str(tmp_path / "absent.json"), "--max-drop", "1"), "absent.json: file not found"),
        (("--baseline", str(good.parent), "--max-drop", "1"),
         f"is a folder; expected a results.json file (did you mean {good}?)"),
        (("--baseline", str(tmp_path / "notes.txt"), "--max-drop", "1"), "notes.txt: not valid JSON"),
        (("--baseline", str(good), "--max-drop", "-1"), "--max-drop -1: expected a number of points >= 0"),
        (("--device", "tpu"), "--device tpu: expected cpu, cuda, cuda:N, cuda:N,M,... or mps"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((("--device", "cuda"), "--device cuda: CUDA is not available on this machine"))
        cases.append((("--device", "cuda:1"), "--device cuda:1: CUDA is not available"))
    for args, expected in cases:
        res, data = project(*args)
        _one_line_usage_error(res, expected)
        assert data is None, args


def test_function_without_cases_is_deselected_not_skipped(project, pytester, assets):
    shutil.copy(REPO / "benchmarks" / "test_biometric.py", pytester.path / "test_biometric.py")
    (pytester.path / "suite.toml").write_text(suite_text(assets))
    res = pytester.runpytest_inprocess(
        "test_general.py", "test_biometric.py", "--suite", str(pytester.path / "suite.toml"),
        "--feature-cache", str(pytester.path / "cache"), "--results-dir", str(pytester.path / "out"),
        "-p", "no:cacheprovider", "-k", "zeroshot and alpha and digits2")
    out = res.parseoutcomes()
    assert res.ret == 0, res.stdout.str()
    assert out["passed"] == 1 and "skipped" not in out and out["deselected"] == 7 + 4
    assert "empty parameter set" not in res.stdout.str()
    res = pytester.runpytest_inprocess(
        "test_general.py", "test_biometric.py", "--suite", str(pytester.path / "suite.toml"),
        "--collect-only", "-q", "-p", "no:cacheprovider")
    assert res.ret == 0
    assert "8/12 tests collected (4 deselected)" in res.stdout.str(), res.stdout.str()
    assert "skipped" not in res.stdout.str()


def test_dataset_models_choose_the_cases(project, assets):
    text = suite_text(assets).replace('root = "' + str(assets / "digits2") + '"',
                                      'root = "' + str(assets / "digits2") + '"\nmodels = ["beta"]')
    res, data = project("-m", "zeroshot", suite=text)
    assert res.ret == 0, res.stdout.str()
    assert set(statuses(data)) == {("zeroshot", "alpha", "digits"), ("zeroshot", "beta", "digits"),
                                   ("zeroshot", "beta", "digits2")}


def test_case_lookup_is_built_from_the_suite_not_parsed(project, assets, pytester):
    """Ids with dashes in model and dataset names map to their cases by lookup (xdist's
    controller and the pending records use it)."""
    from harness.plugin import HarnessSession
    from harness.suite import parse_suite

    text = suite_text(assets).replace("[models.alpha]", "[models.a-b]").replace(
        'baseline = "alpha"', 'baseline = "a-b"').replace("[datasets.digits2]", "[datasets.b-digits]")
    suite = parse_suite(text, str(pytester.path / "s.toml"))
    sess = HarnessSession.__new__(HarnessSession)
    sess._suite, sess._cases = suite, None
    spec = sess.case_of_nodeid("benchmarks/test_general.py::test_zeroshot[a-b-b-digits]")
    assert (spec.protocol, spec.model, spec.dataset) == ("zeroshot", "a-b", "b-digits")
    assert sess.case_of_nodeid("x.py::test_zeroshot[a-b-nothing]") is None
    assert sess.case_of_nodeid("x.py::test_other") is None
    assert len(sess.cases) == len(suite.cases()) == 8


@pytest.mark.parametrize("hostile, expected", [
    (lambda t: t.replace("[models.alpha]", "# caf\xe9\n[models.alpha]").encode("latin-1"),
     "not UTF-8 text (byte "),
    (lambda t: (t + "x = " + "[" * 100_000 + "]" * 100_000 + "\n").encode(),
     "nested too deep to parse; expected at most 32 levels"),
    (lambda t: t.replace('baseline = "alpha"', 'preprocess = { size = 100000000000000000000000000 }').encode(),
     "[models.beta.preprocess] size: expected an integer in 1..4096 (pixels), got 1000000000"),
    (lambda t: t.replace('baseline = "alpha"', 'preprocess = { size = 1e26 }').encode(),
     "[models.beta.preprocess] size: expected an integer, got number 1e+26"),
    (lambda t: t.replace('baseline = "alpha"', 'preprocess = { size = -5 }').encode(),
     "[models.beta.preprocess] size: expected an integer in 1..4096 (pixels), got -5"),
    (lambda t: t.replace('baseline = "alpha"', 'label = "' + "L" * 300 + '"').encode(),
     "[models.beta] label: expected at most 200 characters, got 300"),
])
def test_hostile_suite_is_one_line_exit_4(pytester, assets, hostile, expected):
    shutil.copy(REPO / "benchmarks" / "test_general.py", pytester.path / "test_general.py")
    (pytester.path / "suite.toml").write_bytes(hostile(suite_text(assets)))
    res = pytester.runpytest_inprocess("test_general.py", "--suite", str(pytester.path / "suite.toml"),
                                       "-p", "no:cacheprovider")
    _one_line_usage_error(res, expected)
