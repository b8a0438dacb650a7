"""Scale-out through the plugin: --shard partitions the cases (usage errors for bad values),
the feature stage decodes each image once for all models, --engine ray equals in-process."""

import json
import shutil
from pathlib import Path

import pytest
from test_plugin import assets, suite_text  # noqa: F401  (module fixture and suite)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(pytester, assets):  # noqa: F811
    shutil.copy(REPO / "benchmarks" / "test_general.py", pytester.path / "test_general.py")
    (pytester.path / "suite.toml").write_text(suite_text(assets))

    def go(*args, out="out", subprocess=False):
        runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
        res = runner("test_general.py", "--suite", str(pytester.path / "suite.toml"),
                     "--results-dir", str(pytester.path / out),
                     "--feature-cache", str(pytester.path / "cache"), "-p", "no:cacheprovider",
                     *args)
        p = pytester.path / out / "results.json"
        return res, (json.loads(p.read_text()) if p.exists() else None)

    return go


def metrics(data):
    return {(c["protocol"], c["model"], c["dataset"]): c["metrics"] for c in data["cases"]
            if c["status"] == "passed"}


@pytest.mark.parametrize("bad", ["3/2", "x", "0/1"])
def test_bad_shard_is_a_usage_error(run, bad):
    res, _ = run("--shard", bad)
    assert res.ret == 4
    res.stderr.fnmatch_lines([f"*--shard {bad}: expected I/N with 1 <= I <= N*"])


def test_shards_partition_the_cases_and_refuse_a_shared_folder(run):
    whole, all_data = run()
    assert whole.ret == 0
    seen = {}
    for i in (1, 2):
        res, data = run("--shard", f"{i}/2", out=f"s{i}")
        assert res.ret == 0 and data["run"]["shard"] == f"{i}/2"
        for k, m in metrics(data).items():
            assert k not in seen
            seen[k] = m
    assert seen == metrics(all_data)  # each case in exactly one shard, with the same numbers
    res, _ = run("--shard", "2/2", out="s1")
    assert res.ret == 4
    res.stderr.fnmatch_lines(["*already used by shard 1/2*"])


def test_stage_decodes_each_image_once_for_all_models(run, pytester):
    counter = pytester.path / "conftest.py"
    counter.write_text(
        "import harness.features as hf\n"
        "calls = []\n"
        "real = hf.extract_many\n"
        "def counting(needs, split, *a, **k):\n"
        "    calls.append((split.name, len(needs)))\n"
        "    return real(needs, split, *a, **k)\n"
        "hf.extract_many = counting\n"
        "def pytest_sessionfinish(session):\n"
        "    (session.config.rootpath / 'calls.json').write_text(__import__('json').dumps(calls))\n")
    res, data = run()
    assert res.ret == 0
    calls = json.loads((pytester.path / "calls.json").read_text())
    # two datasets x (train, test): one pass each, both models at once
    assert sorted(calls) == [["test", 2], ["test", 2], ["train", 2], ["train", 2]]
    assert data["run"]["model_loads"] == {"alpha": 1, "beta": 1}


@pytest.mark.skipif(shutil.which("ray") is None and __import__("importlib").util.find_spec("ray")
                    is None, reason="ray not installed (pip install 'tradeoff-bench[ray]')")
def test_ray_engine_equals_inprocess(run):
    _, ref = run(out="inproc")
    res, data = run("--engine", "ray", "--refresh-features", out="ray", subprocess=True)
    assert res.ret == 0, res.stdout.str()[-2000:]
    assert data["run"]["engine"] == "ray"
    assert metrics(data) == metrics(ref)


def test_unreachable_ray_address_is_one_line(run):
    pytest.importorskip("ray")
    res, _ = run("--engine", "ray", "--ray-address", "127.0.0.1:1")
    assert res.ret == 4
    res.stderr.fnmatch_lines(["*--ray-address 127.0.0.1:1: cannot reach the Ray head*"])


def test_shards_merged_give_the_single_runs_report(run, pytester):
    import re

    from harness.merge import main

    _, _ = run("--save-scores", out="single")
    for i in (1, 2):
        res, _ = run("--shard", f"{i}/2", "--save-scores", out=f"s{i}")
        assert res.ret == 0
    assert main([str(pytester.path / "merged")] +
                [str(pytester.path / f"s{i}" / "results.json") for i in (1, 2)]) == 0

    def text(folder):
        t = (pytester.path / folder / "report.md").read_text()
        t = re.sub(r"started: [^,]*, ", "", t)
        t = re.sub(r"git_commit: \S+", "", t)
        return re.sub(r", shard: [^,\n]*", "", t)

    assert text("merged") == text("single")
    single = (pytester.path / "single" / "results.csv").read_text()
    assert (pytester.path / "merged" / "results.csv").read_text() == single


def test_fewer_models_than_workers_spreads_a_models_datasets(run, pytester):
    """One model, two datasets, two workers: each worker takes one dataset's cases (the model
    loads once per worker), with the numbers of a single-process run."""
    pytest.importorskip("xdist")
    one_model = (pytester.path / "suite.toml").read_text().split("[models.beta]")[0]
    one_model += "\n" + "[datasets" + (pytester.path / "suite.toml").read_text().split("[datasets", 1)[1]
    (pytester.path / "suite.toml").write_text(one_model.replace('baseline = "alpha"', ""))
    _, ref = run(out="single")
    res, data = run("-n", "2", "--refresh-features", out="xdist", subprocess=True)
    assert res.ret == 0, res.stdout.str()[-2000:]
    assert data["run"]["model_loads"] == {"alpha": 2}  # one load on each worker
    assert metrics(data) == metrics(ref) and len(metrics(data)) == 4


# A barrier at each process's first decoded image: the first worker to claim a chunk waits
# there until the other worker has claimed (and starts decoding) another one, so that both
# decode rows whatever their start-up times; then every image costs 10 ms.
BARRIER = """
import os, time
import harness.features as hf

_real = hf._MultiDataset.__getitem__
_first = [True]

def _slow(self, i):
    if _first[0]:
        _first[0] = False
        d = os.environ["SPLIT_BARRIER"]
        open(os.path.join(d, str(os.getpid())), "w").close()
        t0 = time.monotonic()
        while len(os.listdir(d)) < 2 and time.monotonic() - t0 < 60:
            time.sleep(0.01)
    time.sleep(0.01)
    return _real(self, i)

hf._MultiDataset.__getitem__ = _slow
"""


def _one_model_one_dataset(pytester):
    text = (pytester.path / "suite.toml").read_text()
    suite = text.split("[models.beta]")[0] + "\n[datasets" + text.split("[datasets", 1)[1]
    suite = suite.split("[datasets.digits2]")[0]
    (pytester.path / "suite.toml").write_text(suite)


def test_one_model_one_dataset_split_is_shared_by_the_workers(run, pytester, monkeypatch):
    """One model, one dataset, -n 2: the scheduler gives every case to one worker, yet both
    workers decode rows of its splits (chunk claims), each row once, with the numbers of a
    single-process run."""
    pytest.importorskip("xdist")
    _one_model_one_dataset(pytester)
    small = ("--batch-size", "4", "--chunk-rows", "8")  # train 40 rows = 5 chunks, test 30 = 4
    _, ref = run(*small, out="single")
    assert len(metrics(ref)) == 2
    (pytester.path / "conftest.py").write_text(BARRIER)
    barrier = pytester.path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("SPLIT_BARRIER", str(barrier))
    res, data = run("-n", "2", *small, "--refresh-features", out="xdist", subprocess=True)
    assert res.ret == 0, res.stdout.str()[-3000:]
    assert metrics(data) == metrics(ref)
    stage = data["run"]["feature_stage"]
    assert set(stage) == {"gw0", "gw1"} and all(w["shared"] for w in stage.values())
    decoded = [w["decoded_rows"] for w in stage.values()]
    assert all(d > 0 for d in decoded) and sum(decoded) == 40 + 30, stage  # each row once
    assert data["run"]["model_loads"] == {"alpha": 2}  # one build per helping worker
    cache = pytester.path / "cache" / "features"
    assert not list(cache.rglob("*.claim")) and not list(cache.rglob("*.tmp"))
    assert not list(cache.rglob("chunks"))  # every shared entry finished


def test_as_many_models_as_workers_changes_nothing(run, pytester, monkeypatch):
    """Two models, -n 2: each worker runs one model's cases and extracts its splits alone, as
    before (no help pass, no extra model build), even with splits of several chunks."""
    pytest.importorskip("xdist")
    small = ("--batch-size", "4", "--chunk-rows", "8")
    res, data = run("-n", "2", *small, out="xdist", subprocess=True)
    assert res.ret == 0, res.stdout.str()[-3000:]
    assert data["run"]["model_loads"] == {"alpha": 1, "beta": 1}
    stage = data["run"]["feature_stage"]
    assert not any(w["shared"] for w in stage.values()) and not any(w["help_seconds"] for w in stage.values())
    # digits 40 + 30 and digits2 30 + 20 rows, once per model
    assert sorted(w["decoded_rows"] for w in stage.values()) == [120, 120], stage
