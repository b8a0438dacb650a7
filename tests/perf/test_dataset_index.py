"""Warm open of a 200,000-file ImageFolder from the persisted listing (issue 12, item 4).

Run with ``pytest tests/perf/test_dataset_index.py --perf``.  Generates ``test/<class>/<n>.png``
as empty files (listing never opens them): 1,000 classes x 200 files, moves the directories'
mtimes a minute into the past (so the index is not "racy"), opens the dataset once cold (walks
and writes the index), then measures warm opens with pytest-benchmark and counts the
``os.stat`` / ``os.lstat`` / ``os.scandir`` calls of one warm open.

Target: warm open <= 2 s, with stat calls far fewer than files (one per directory).
"""

from __future__ import annotations

import os
import time

import pytest

from harness.data import open_dataset
from harness.suite import DatasetSpec

pytestmark = pytest.mark.perf

CLASSES, PER_CLASS = 1_000, 200


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    test = root / "test"
    for c in range(CLASSES):
        d = test / f"c{c:04d}"
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            os.close(os.open(d / f"{i}.png", os.O_CREAT | os.O_WRONLY, 0o644))
    t = time.time() - 60
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))
    return root


def test_warm_open_200k(big_tree, tmp_path, benchmark, monkeypatch):
    spec = DatasetSpec(id="big", type="classification", format="imagefolder", root=str(big_tree),
                       source="perf", protocols=("zeroshot",))
    idx = tmp_path / "cache"
    t0 = time.perf_counter()
    cold = open_dataset(spec, index_dir=idx)
    cold_s = time.perf_counter() - t0
    n = len(cold.split("test"))
    assert n == CLASSES * PER_CLASS

    counts = {"stat": 0, "lstat": 0, "scandir": 0}
    with monkeypatch.context() as m:
        for name in counts:
            real = getattr(os, name)

            def counted(*a, _real=real, _name=name, **k):
                counts[_name] += 1
                return _real(*a, **k)

            m.setattr(os, name, counted)
        warm = open_dataset(spec, index_dir=idx)
    assert warm.split("test").fingerprint() == cold.split("test").fingerprint()

    result = benchmark.pedantic(lambda: open_dataset(spec, index_dir=idx), rounds=3, iterations=1)
    assert len(result.split("test")) == n
    warm_s = benchmark.stats.stats.mean
    load = os.getloadavg()
    benchmark.extra_info.update({"files": n, "directories": CLASSES + 1, "cold_s": round(cold_s, 2),
                                 "warm_s": round(warm_s, 3), **{f"{k}_calls": v for k, v in counts.items()},
                                 "loadavg": [round(x, 2) for x in load]})
    print(f"\n200k ImageFolder: cold {cold_s:.2f} s, warm {warm_s:.3f} s (mean of 3), "
          f"warm stat {counts['stat']}, lstat {counts['lstat']}, scandir {counts['scandir']} "
          f"for {n} files in {CLASSES + 1} directories; load average {load}")
    assert counts["stat"] + counts["lstat"] <= CLASSES + 50       # one per directory, not per file
    assert warm_s <= 2.0
