"""Issue 12, item 6: one model and one large split under ``pytest -n 2``.

The scheduler gives every case of the one (model, dataset) to one worker; with split sharing
(the default) both workers extract the split together, chunk by chunk; with
``--no-split-sharing`` the owner extracts it alone while the other worker idles.  Each run is
a whole ``pytest -n 2`` process on a fresh (cold) cache, zero-shot on an ImageFolder test split
of ``SHARE_N`` (default 40,000) 28x28 PNGs with a tiny open_clip CLIP of ``tests/tiny_clip.py``;
a single-process run is the reference for the metrics.

Reported (``extra_info`` and printed lines): the pytest wall of each run, the stage wall (from
results.json's ``feature_stage``: the longest, over the workers, of the time from the start of
a worker's test loop until its feature stage was over -- torch imports and the model build
included in both modes), and the rows each worker decoded.  Run with ``pytest tests/perf/test_split_share_speed.py
--perf``.  On a machine whose cores are shared with other jobs the figures move with the load
average, which is reported too.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_clip import make_tiny_clip

REPO = Path(__file__).resolve().parents[2]
N = int(os.environ.get("SHARE_N", "40000"))
CLASSES = 10


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(CLASSES, 28, 28), dtype=np.uint8)
    for c in range(CLASSES):
        (root / "data" / "test" / str(c)).mkdir(parents=True)
    for i in range(N):
        y = i % CLASSES
        arr = (base[y] // 2 + rng.integers(0, 128, size=(28, 28), dtype=np.uint8)).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        (root / "data" / "test" / str(y) / f"{i:05d}.png").write_bytes(buf.getvalue())
    model = make_tiny_clip(root / "tiny")
    (root / "suite.toml").write_text(
        f"""
[models.tiny]
arch = "local-dir:{model}"

[datasets.big]
type = "classification"
format = "imagefolder"
root = "{root / "data"}"
prompts = "mnist"
protocols = ["zeroshot"]
"""
    )
    shutil.copy(REPO / "benchmarks" / "test_general.py", root / "test_general.py")
    return root


def _run(root: Path, tag: str, *args: str) -> tuple[float, dict]:
    cmd = [
        sys.executable, "-m", "pytest", "test_general.py", "-q", "-p", "no:cacheprovider",
        "--suite", str(root / "suite.toml"), "--results-dir", str(root / f"out-{tag}"),
        "--feature-cache", str(root / f"cache-{tag}"), *args,
    ]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return wall, json.loads((root / f"out-{tag}" / "results.json").read_text())


def _metrics(data: dict) -> dict:
    return {(c["protocol"], c["model"], c["dataset"]): c["metrics"] for c in data["cases"]}


def _figures(data: dict, wall: float) -> dict:
    stage = data["run"]["feature_stage"]
    return {
        "wall_s": round(wall, 1),
        "stage_s": round(max(w["stage_wall_seconds"] for w in stage.values()), 1),
        "decoded": {k: stage[k]["decoded_rows"] for k in sorted(stage)},
    }


def test_one_model_one_large_split_two_workers(project, benchmark):
    pytest.importorskip("xdist")
    rounds = int(os.environ.get("SHARE_ROUNDS", "3"))
    _run(project, "warm-up", "-n", "2")  # first-use costs (imports, page cache, listing index)
    _, single = _run(project, "single")
    runs: dict[str, list[dict]] = {"alone": [], "shared": []}
    loads = [os.getloadavg()[0]]
    for r in range(rounds):  # alternating, so that a change of load hits both alike
        for tag in ("alone", "shared") if r % 2 == 0 else ("shared", "alone"):
            extra = ("--no-split-sharing",) if tag == "alone" else ()
            wall, data = _run(project, f"{tag}{r}", "-n", "2", *extra)
            assert _metrics(data) == _metrics(single)
            f = _figures(data, wall)
            assert sum(f["decoded"].values()) == N  # every image once
            if tag == "shared":
                assert all(n > 0 for n in f["decoded"].values())
            runs[tag].append(f)
            loads.append(os.getloadavg()[0])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    def median(tag: str, key: str) -> float:
        return float(np.median([f[key] for f in runs[tag]]))

    summary = {
        "alone_stage_s": median("alone", "stage_s"),
        "shared_stage_s": median("shared", "stage_s"),
        "alone_wall_s": median("alone", "wall_s"),
        "shared_wall_s": median("shared", "wall_s"),
        "load_average": [round(x, 1) for x in loads],
    }
    benchmark.extra_info.update({**summary, "runs": runs})
    print(f"\n{N:,} images, one tiny model, pytest -n 2, {rounds} rounds (median):")
    for tag in ("alone", "shared"):
        stages = ", ".join(f"{f['stage_s']}" for f in runs[tag])
        walls = ", ".join(f"{f['wall_s']}" for f in runs[tag])
        print(
            f"  {tag:6s} stage {median(tag, 'stage_s'):.1f} s ({stages}); pytest wall "
            f"{median(tag, 'wall_s'):.1f} s ({walls}); decoded {[f['decoded'] for f in runs[tag]]}"
        )
    print(f"  load average during the runs: {summary['load_average']}")
