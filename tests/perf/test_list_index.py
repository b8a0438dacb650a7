"""Warm open of an IJB-like list of 200,000 images in a few folders (issue 12, item 4, lists).

Run with ``pytest tests/perf/test_list_index.py --perf``.  Writes an ``ijb`` dataset whose
``loose_crop/`` holds 200,000 empty ``.jpg`` files in 4 sub-folders of 50,000 (opening a dataset
never reads them), with the three meta files listing every image (a handful of pairs: the pair
file is not what is measured), moves every directory's mtime a minute into the past (so the
index is not "racy"), opens it once cold, then measures warm opens with pytest-benchmark and
counts the ``os.stat`` / ``os.lstat`` / ``os.scandir`` calls of one warm open.  The list check
alone is timed too: the per-file loop the loader ran before the list index (``item_fingerprint``,
one ``stat`` per image) against a warm :func:`harness.data.index.open_listed` of the same list.

Target: stat calls far fewer than images (one per listed directory, not one per file).
"""

from __future__ import annotations

import os
import time

import pytest

from harness.data import open_dataset
from harness.data.base import item_fingerprint
from harness.suite import DatasetSpec

pytestmark = pytest.mark.perf

FOLDERS, PER_FOLDER = 4, 50_000


@pytest.fixture(scope="module")
def big_ijb(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "IJBC"
    (root / "meta").mkdir(parents=True)
    names = []
    for d in range(FOLDERS):
        folder = root / "loose_crop" / f"f{d}"
        folder.mkdir(parents=True)
        for i in range(PER_FOLDER):
            name = f"f{d}/{i}.jpg"
            os.close(os.open(root / "loose_crop" / name, os.O_CREAT | os.O_WRONLY, 0o644))
            names.append(name)
    with open(root / "meta" / "ijbc_face_tid_mid.txt", "w") as f:
        f.writelines(f"{n} {k // 10} {k // 5}\n" for k, n in enumerate(names))
    with open(root / "meta" / "ijbc_name_5pts_score.txt", "w") as f:
        pts = " ".join(["50.0"] * 10)
        f.writelines(f"{n} {pts} 0.9\n" for n in names)
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("0 1 1\n0 2 0\n1 2 0\n")
    t = time.time() - 60
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))
    return root


def _counting(m, counts):
    for name in counts:
        real = getattr(os, name)

        def counted(*a, _real=real, _name=name, **k):
            counts[_name] += 1
            return _real(*a, **k)

        m.setattr(os, name, counted)


def test_warm_open_ijb_list_200k(big_ijb, tmp_path, benchmark, monkeypatch):
    spec = DatasetSpec(id="big", type="ijb", format="ijb", root=str(big_ijb), source="perf",
                       protocols=("ijb",))
    idx = tmp_path / "cache"
    t0 = time.perf_counter()
    cold = open_dataset(spec, index_dir=idx)
    cold_s = time.perf_counter() - t0
    n = len(cold.split("test"))
    assert n == FOLDERS * PER_FOLDER

    counts = {"stat": 0, "lstat": 0, "scandir": 0}
    with monkeypatch.context() as m:
        _counting(m, counts)
        warm = open_dataset(spec, index_dir=idx)
    assert warm.split("test").fingerprint() == cold.split("test").fingerprint()

    # the list check alone: before (one stat per image) and after (the warm list index)
    items = list(warm.split("test").items)
    t0 = time.perf_counter()
    per_file = [item_fingerprint(p) for p in items]
    loop_s = time.perf_counter() - t0
    assert not any(f.endswith("|missing") for f in per_file)
    list_s, list_stats = None, None
    try:
        from harness.data.index import open_listed
    except ImportError:  # the code before the list index
        open_listed = None
    if open_listed is not None:
        lc = {"stat": 0, "lstat": 0, "scandir": 0}
        with monkeypatch.context() as m:
            _counting(m, lc)
            t0 = time.perf_counter()
            listed = open_listed(items, idx)
            list_s = time.perf_counter() - t0
        assert listed.from_index
        list_stats = lc["stat"] + lc["lstat"]

    result = benchmark.pedantic(lambda: open_dataset(spec, index_dir=idx), rounds=3, iterations=1)
    assert len(result.split("test")) == n
    warm_s = benchmark.stats.stats.mean
    load = os.getloadavg()
    benchmark.extra_info.update({"files": n, "directories": FOLDERS, "cold_s": round(cold_s, 2),
                                 "warm_s": round(warm_s, 3), **{f"{k}_calls": v for k, v in counts.items()},
                                 "per_file_stat_loop_s": round(loop_s, 3), "open_listed_warm_s": list_s,
                                 "open_listed_warm_stats": list_stats,
                                 "loadavg": [round(x, 2) for x in load]})
    print(f"\n200k IJB list: cold {cold_s:.2f} s, warm {warm_s:.3f} s (mean of 3), "
          f"warm stat {counts['stat']}, lstat {counts['lstat']}, scandir {counts['scandir']} "
          f"for {n} images in {FOLDERS} folders; list check alone: per-file stat loop "
          f"{loop_s:.3f} s ({n} stats), warm open_listed "
          f"{'n/a' if list_s is None else f'{list_s:.3f} s ({list_stats} stats)'}; load average {load}")
    assert counts["stat"] + counts["lstat"] <= 100         # per directory, not per file
