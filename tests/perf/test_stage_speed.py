"""Issue 12/13 performance goals for the feature stage.

- Four models sharing one 70,000-image dataset: the cold wall of the stage (one decode pass for
  all four) at most 1.5x that of one model (goal of issue 12: 1.15x and 1.28x measured; it was
  2.1x while the loader plan timed the forward on a batch of 8 and gave four models one decode
  worker instead of two).
- The Ray engine's cost on one 2-core machine, against the in-process engine, on the same data.

A Fashion-MNIST-shaped ImageFolder (60,000 train + 10,000 test 28x28 PNGs, 10 classes) goes
through :meth:`harness.features.FeatureCache.features_many` -- what the stage runs -- with
1 and 4 tiny open_clip models of ``tests/tiny_clip.py`` (different weights, the same
preprocessing), each into a fresh cache (cold).  Peak RSS is this process's plus its children's
(loader workers; for Ray, the driver only -- Ray's own processes are reported separately).
Run with ``pytest tests/perf/test_stage_speed.py --perf``; figures go to ``extra_info``.
"""

from __future__ import annotations

import io
import resource
import time

import numpy as np
import pytest
from PIL import Image
from tiny_clip import make_tiny_clip

from harness.data import open_dataset
from harness.features import FeatureCache
from harness.models import load_model
from harness.suite import DatasetSpec, ModelSpec

N_TRAIN, N_TEST, CLASSES = 60_000, 10_000, 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(CLASSES, 28, 28), dtype=np.uint8)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for c in range(CLASSES):
            (root / "data" / split / str(c)).mkdir(parents=True)
        for i in range(n):
            y = i % CLASSES
            arr = (base[y] // 2 + rng.integers(0, 128, size=(28, 28), dtype=np.uint8)).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            (root / "data" / split / str(y) / f"{i:05d}.png").write_bytes(buf.getvalue())
    spec = DatasetSpec(
        id="fashion",
        type="classification",
        format="imagefolder",
        root=str(root / "data"),
        source="perf",
        protocols=("zeroshot",),
    )
    ds = open_dataset(spec, index_dir=root / "index")
    models = [
        load_model(
            ModelSpec(id=f"m{s}", arch=f"local-dir:{make_tiny_clip(root / f'm{s}', seed=s)}", source="perf"),
            "cpu",
        )
        for s in range(4)
    ]
    return root, ds, models


def _cold(root, tag, ds, models, extractor=None) -> tuple[float, int]:
    t0 = time.perf_counter()
    for split in ("train", "test"):
        cache = FeatureCache(root / f"cache-{tag}")
        cache.features_many([(m, False) for m in models], ds.split(split), extractor=extractor)
    wall = time.perf_counter() - t0
    rss = (
        max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        // 1024
    )
    return wall, rss


def test_four_models_share_one_decode_pass(setup, benchmark):
    root, ds, models = setup
    _cold(root, "warm-up", ds, models[:1])  # first-use costs (imports, page cache) out of the way
    one, _ = _cold(root, "one", ds, models[:1])
    four = benchmark.pedantic(lambda: _cold(root, "four", ds, models)[0], rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"one_model_s": round(one, 1), "four_models_s": round(four, 1), "ratio": round(four / one, 2)}
    )
    print(
        f"\n70,000 images: one model {one:.1f} s, four models {four:.1f} s, "
        f"ratio {four / one:.2f} (goal <= 1.5)"
    )
    assert four <= 1.5 * one  # issue 12's goal


def test_ray_engine_cost_on_one_node(setup, benchmark):
    pytest.importorskip("ray")
    import functools

    from harness.ray_engine import ensure_ray, extract_many_ray_needs

    root, ds, models = setup
    inproc, rss_in = _cold(root, "inproc", ds, models[:1])
    t0 = time.perf_counter()
    ensure_ray(num_cpus=2)
    start = time.perf_counter() - t0
    ray_wall = benchmark.pedantic(
        lambda: _cold(root, "ray", ds, models[:1], functools.partial(extract_many_ray_needs))[0],
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(
        {
            "inprocess_s": round(inproc, 1),
            "ray_s": round(ray_wall, 1),
            "ray_start_s": round(start, 1),
            "driver_rss_mb": rss_in,
        }
    )
    print(
        f"\n70,000 images, one model: in-process {inproc:.1f} s, Ray {ray_wall:.1f} s "
        f"(+ {start:.1f} s to start Ray); peak RSS in-process {rss_in} MB"
    )
