"""Installation: the plugin's fixtures under the project's own import name, so that PyPI's
unrelated ``fixtures`` package in the same environment changes nothing, and a run from a folder
outside the checkout (``pytest --pyargs tradeoff_bench_benchmarks``), from the editable install
and from a built wheel with its shipped suites."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_clip import make_digits_imagefolder, make_tiny_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A folder outside the checkout with a tiny suite, and a stand-in for PyPI's ``fixtures``
    (a top-level package of that name, first on the path, as ``pip install fixtures`` makes
    it)."""
    root = tmp_path_factory.mktemp("outside")
    make_tiny_clip(root / "tiny", seed=0)
    make_digits_imagefolder(root / "digits")
    (root / "suite.toml").write_text(f"""
[models.tiny]
arch = "local-dir:{root / 'tiny'}"

[datasets.digits]
type = "classification"
format = "imagefolder"
root = "{root / 'digits'}"
prompts = "mnist"
protocols = ["zeroshot"]
""")
    fx = root / "pypi" / "fixtures"
    fx.mkdir(parents=True)
    (fx / "__init__.py").write_text('"""Stand-in for PyPI\'s fixtures 4.x."""\nclass Fixture:\n    pass\n')
    return root


def run_outside(root, *args, path=()):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), str(root / "pypi")]),
           "HARNESS_CACHE": str(root / "cache")}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)


def which(root, module, path=()):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), str(root / "pypi")])}
    out = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def check_run(root, results, path=()):
    res = run_outside(root, "--pyargs", "tradeoff_bench_benchmarks", "--suite",
                      str(root / "suite.toml"), "--results-dir", str(results), path=path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fixture 'harness_case' not found" not in res.stdout
    data = json.loads((results / "results.json").read_text())
    assert [(c["protocol"], c["model"], c["dataset"], c["status"]) for c in data["cases"]] == [
        ("zeroshot", "tiny", "digits", "passed")]
    assert set(data["cases"][0]["metrics"]) >= {"acc1", "mean_per_class_recall"}
    return data


def test_editable_install_next_to_pypi_fixtures_outside_the_checkout(outside):
    assert which(outside, "fixtures") == outside / "pypi" / "fixtures" / "__init__.py"
    data = check_run(outside, outside / "res-editable")
    assert data["run"]["suite"] == "suite"


def test_wheel_ships_suites_and_benchmarks(outside, tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for f in files:
        if f.startswith(("tests/", ".ci/")) or not (REPO / f).is_file():
            continue
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=300)
    names = {p.name for p in site.iterdir()}
    assert {"harness", "tradeoff_bench_fixtures", "tradeoff_bench_benchmarks"} <= names
    assert "fixtures" not in names and "benchmarks" not in names
    assert {p.name for p in (site / "tradeoff_bench_benchmarks" / "suites").glob("*.toml")} >= {
        "demo.toml", "paper.toml"}
    assert which(outside, "tradeoff_bench_benchmarks", [site]).parent == site / "tradeoff_bench_benchmarks"
    # --suite NAME resolves to the shipped suites outside a checkout
    res = run_outside(outside, "--pyargs", "tradeoff_bench_benchmarks", "--suite", "demo",
                      "--collect-only", "-q", path=[site])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "28 tests collected" in res.stdout, res.stdout
    res = run_outside(outside, "--pyargs", "tradeoff_bench_benchmarks", "--suite", "demoo",
                      "--collect-only", "-q", path=[site])
    assert res.returncode == 4 and "(did you mean 'demo'?)" in res.stderr
    check_run(outside, outside / "res-wheel", path=[site])
