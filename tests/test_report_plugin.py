"""The report's behaviour end to end under pytester (issue 11 defects 1, 6, 7, 8; issue 14.3):
a baseline that is the results dir's own results.json, -p no:benchmark, the terminal ending on
the report, `not run` cases failing the session, file modes, a results folder that cannot be
written, and raw scores, intervals and figures of a PAD case (also under xdist)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_clip import make_digits_imagefolder, make_tiny_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    make_tiny_clip(root / "tiny-a", seed=0)
    make_tiny_clip(root / "tiny-b", seed=1)
    digits = make_digits_imagefolder(root / "digits")
    pad = root / "pad"
    pad.mkdir()
    for split, csv in (("test", "test.csv"), ("train", "train.csv")):
        lines = ["path,label,attack_type"]
        for f in sorted((Path(digits) / split).rglob("*.png")):
            cls = int(f.parent.name) if f.parent.name.isdigit() else sorted(
                p.name for p in f.parent.parent.iterdir()).index(f.parent.name)
            rel = os.path.relpath(f, pad)
            if cls < 4:
                lines.append(f"{rel},bonafide,")
            else:
                lines.append(f"{rel},attack,{'print' if cls % 2 else 'replay'}")
        (pad / csv).write_text("\n".join(lines) + "\n")
    return root


def suite_text(assets):
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

[datasets.spoofs]
type = "pad"
format = "list"
root = "{assets / 'pad'}"
protocols = ["pad"]
scoring = "probe"
allow_outside_root = true
"""


@pytest.fixture
def project(pytester, assets):
    for f in ("test_general.py", "test_biometric.py"):
        shutil.copy(REPO / "benchmarks" / f, pytester.path / f)
    out = pytester.path / "out"

    def run(*args, conftest=None, subprocess=False, files=("test_general.py",)):
        (pytester.path / "suite.toml").write_text(suite_text(assets))
        if conftest:
            (pytester.path / "conftest.py").write_text(conftest)
        runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
        res = runner(*files, "--suite", str(pytester.path / "suite.toml"), "--results-dir", str(out),
                     "--feature-cache", str(pytester.path / "cache"), "-p", "no:cacheprovider", *args)
        path = out / "results.json"
        return res, (json.loads(path.read_text()) if path.exists() else None)

    run.out = out
    return run


@pytest.mark.parametrize("xdist", [False, True])
def test_baseline_in_the_results_dir_is_read_before_it_is_rewritten(project, xdist):
    """Issue 11 defect 1: `--results-dir D --baseline D/results.json --max-drop 1` rewrote
    D/results.json before reading it, so real drops passed silently.  Under xdist the file is
    read once, by the controller at configure time; the workers get its metrics."""
    extra = ["-n", "2"] if xdist else []
    res, data = project("-m", "zeroshot")
    assert res.ret == 0
    for c in data["cases"]:   # make the stored numbers 20 points better than what runs now
        c["metrics"] = {k: v + 0.2 for k, v in c["metrics"].items()}
    (project.out / "results.json").write_text(json.dumps(data))
    base = str(project.out / "results.json")
    res, data2 = project("-m", "zeroshot", "--baseline", base, "--max-drop", "1", *extra)
    out = res.stdout.str()
    assert res.ret == 1, out
    assert "acc1 lost 20.00 points" in out
    assert sum(ln.startswith("FAILED test_general.py::test_zeroshot[") for ln in res.outlines) == 2
    assert {c["status"] for c in data2["cases"]} == {"failed"}
    report = (project.out / "report.md").read_text()
    assert "## Against the baseline (results.json)" in report
    acc1 = [ln for ln in report.splitlines() if ln.startswith("| zeroshot[") and "| acc1 ↑" in ln]
    assert len(acc1) == 2 and all("| -20.00" in ln and "outside (> 1)" in ln for ln in acc1)


def test_without_pytest_benchmark_and_terminal_ends_on_the_report(project):
    """Issue 11 defect 6."""
    res, data = project("-m", "zeroshot", "-p", "no:benchmark")
    assert res.ret == 0, res.stdout.str()
    assert {c["status"] for c in data["cases"]} == {"passed"}
    res, _ = project("-m", "zeroshot")
    lines = res.outlines
    assert res.ret == 0 and not any("benchmark: " in ln and "tests" in ln for ln in lines)
    assert not any(ln.startswith("Name (time in") for ln in lines), "pytest-benchmark's table shown"
    sec = max(i for i, ln in enumerate(lines) if "tradeoff-bench" in ln and ln.startswith("="))
    after = [ln for ln in lines[sec:] if "benchmark" in ln.lower() and "tradeoff" not in ln.lower()
             and not ln.startswith(("results:", "report:"))]
    assert after == [], after
    assert lines[-2].startswith("report:")


RUN_ONE = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):   # a runner that silently stops after the first case
    item = session.items[0]
    item.config.hook.pytest_runtest_protocol(item=item, nextitem=None)
    return True
"""


def test_cases_left_not_run_fail_the_session_and_are_listed(project):
    """Issue 11 defect 7: a run ending with collected cases `not run` exited 0."""
    res, data = project("-m", "zeroshot", conftest=RUN_ONE)
    out = res.stdout.str()
    assert res.ret == 1, out
    assert [c["status"] for c in data["cases"]].count("not run") == 1
    assert "1 collected case(s) did not run" in out
    report = (project.out / "report.md").read_text()
    assert "| zeroshot[beta-digits] | not run | did not run |" in report
    assert "interrupted" not in report


def test_files_get_the_umask_mode(project):
    """Issue 11 defect 8: results.json and report.md were 0600."""
    old = os.umask(0o022)
    try:
        res, _ = project("-m", "zeroshot")
    finally:
        os.umask(old)
    assert res.ret == 0
    for name in ("results.json", "report.md", "results.csv"):
        assert (project.out / name).stat().st_mode & 0o777 == 0o644, name


FULL_DISK = """
import errno
import harness.results as R

_real = R.write_text_atomic

def _full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

def _write(path, text):   # results.json (and its journal) cannot be written
    if path.name == "results.json":
        _full()
    _real(path, text)

R.write_text_atomic = _write
R._write_all = _full
"""


def test_full_results_folder_does_not_abort_the_session(project):
    """Issue 14.3: ENOSPC writing results.json became INTERNALERROR after the first cases."""
    res, _ = project(conftest=FULL_DISK, subprocess=True)   # the patch must not outlive the run
    out = res.stdout.str()
    assert "INTERNALERROR" not in out
    assert "4 passed" in out                 # every case ran
    assert res.ret == 1
    assert "RESULTS NOT WRITTEN" in out and str(project.out / "results.json") in out
    assert "No space left on device" in out
    assert not (project.out / "results.json").exists()
    report = (project.out / "report.md").read_text()   # the report still has every case
    assert "Results could not be written" in report and "Cases: 4 passed" in report


@pytest.mark.parametrize("xdist", [False, True])
def test_save_scores_intervals_and_curves(project, xdist):
    extra = ["-n", "2"] if xdist else []
    res, data = project("-m", "pad", "--save-scores", "--ci", *extra, files=("test_biometric.py",))
    assert res.ret == 0, res.stdout.str()
    for model in ("alpha", "beta"):
        p = project.out / "scores" / "pad" / f"{model}--spoofs.npz"
        with np.load(p, allow_pickle=False) as z:
            assert z["scores"].dtype == np.float64 and z["labels"].dtype == np.int8
            assert len(z["scores"]) == 30 and int(z["labels"].sum()) == 12
            assert all(not p.startswith("/") for p in z["paths"].tolist())
            assert set(z["attack_types"][z["labels"] == 1].tolist()) == {""}
            assert set(z["attack_types"][z["labels"] == 0].tolist()) == {"print", "replay"}
        case = next(c for c in data["cases"] if c["model"] == model)
        assert case["n"]["bona_fide"] == 12 and case["n"]["attack"] == 18
        lo, hi = case["ci"]["hter"]
        assert lo <= case["metrics"]["hter"] <= hi and "bootstrap" in case["ci_method"]["hter"]
    report = (project.out / "report.md").read_text()
    assert "roc-det-pad-spoofs.png" in report and (project.out / "roc-det-pad-spoofs.png").stat().st_size > 5000
    assert "Threshold: test-eer" in report
    res, _ = project("-m", "pad", *extra, files=("test_biometric.py",))
    assert res.ret == 0
    assert not (project.out / ".scores-tmp").exists()
    assert "roc-det-pad-spoofs.png" in (project.out / "report.md").read_text()


INTERRUPT = """
seen = []

def pytest_runtest_logreport(report):
    if report.when == "teardown":
        seen.append(report.nodeid)
        if len(seen) == 1:
            raise KeyboardInterrupt   # Ctrl-C after the first case
"""


def test_interrupted_run_says_so_and_lists_what_did_not_run(project):
    """Issue 11 defect 7: an interrupted run's report did not list the cases that did not run."""
    res, data = project("-m", "zeroshot", conftest=INTERRUPT, subprocess=True)
    assert res.ret == 2
    assert data["run"]["interrupted"] is True
    report = (project.out / "report.md").read_text()
    assert "**The run was interrupted**" in report
    assert "| zeroshot[beta-digits] | not run | did not run |" in report
    assert "exit status non-zero" not in res.stdout.str()   # interrupted: not-run is expected
