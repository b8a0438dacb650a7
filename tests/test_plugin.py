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
min = 0.0
"""
    res, data = project(suite=suite_text(assets, gates))
    st = statuses(data)
    lp = {c["dataset"]: c for c in data["cases"] if c["protocol"] == "linear_probe" and c["model"] == "beta"}
    assert res.ret == 1
    assert st[("zeroshot", "alpha", "digits")] == "passed"
    for d, c in lp.items():
        if c["metrics"]["acc1"] > 0:
            assert c["status"] == "failed"
            assert f"acc1 {100 * c['metrics']['acc1']:.1f}% > max 0.0% (linear_probe beta/{d})" in c["reason"]
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
