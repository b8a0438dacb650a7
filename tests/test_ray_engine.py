"""The Ray engine on a local 2-CPU Ray: equal to the in-process engine, retries a killed actor."""

import os
import socket
import time

import numpy as np
import pytest

pytest.importorskip("ray")

from harness.data.base import Split  # noqa: E402
from harness.features import extract  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.ray_engine import RayUnavailable, check_address, extract_many_ray  # noqa: E402
from harness.suite import ModelSpec  # noqa: E402
from tiny_clip import make_digits_imagefolder, make_tiny_clip  # noqa: E402


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    flag = tmp_path_factory.mktemp("fault") / "kill-once"
    os.environ["HARNESS_FAULT_KILL_ONCE"] = str(flag)  # inherited by the workers Ray starts
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield flag
    ray.shutdown()
    os.environ.pop("HARNESS_FAULT_KILL_ONCE", None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    specs = [ModelSpec(id=f"m{s}", arch=f"local-dir:{make_tiny_clip(root / f'm{s}', seed=s)}",
                       source="test") for s in (0, 1)]
    data = make_digits_imagefolder(root / "digits", n_train=0, n_test=6)
    paths = sorted(str(p) for p in (data / "test").rglob("*.png"))
    (root / "bad.png").write_bytes(b"not an image")
    paths.append(str(root / "bad.png"))
    split = Split("test", paths, np.arange(len(paths)) % 10)
    return specs, split


def _inprocess(specs, flips, split):
    out = []
    for s, flip in zip(specs, flips):
        m = load_model(s, "cpu")
        out.append((m.preprocess, extract(m, split, flip=flip, batch_size=16, num_workers=0)))
    return out


def test_ray_equals_inprocess(ray_local, tiny):
    specs, split = tiny
    flips = [False, True]
    ref = _inprocess(specs, flips, split)
    got = extract_many_ray(specs, flips, [p for p, _ in ref], split, batch_size=16)
    for (_, r), g in zip(ref, got):
        assert g.x.shape == r.x.shape
        assert np.abs(g.x - r.x).max() <= 1e-6
        assert np.array_equal(g.valid, r.valid) and g.bad_items == r.bad_items
        assert not g.valid[-1]


def test_killed_actor_is_retried_with_equal_results(ray_local, tiny):
    specs, split = tiny
    ref = _inprocess(specs[:1], [False], split)
    ray_local.write_text("die")
    got = extract_many_ray(specs[:1], [False], [ref[0][0]], split, batch_size=8)
    assert not ray_local.exists()  # the actor did die once
    assert np.abs(got[0].x - ref[0][1].x).max() <= 1e-6


def test_unreachable_address_is_one_line_within_seconds():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.perf_counter()
    with pytest.raises(RayUnavailable, match=f"127.0.0.1:{port}: cannot reach"):
        check_address(f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 10  # a refused connect, not a hang
    with pytest.raises(RayUnavailable, match="expected HOST:PORT"):
        check_address("nonsense")


def test_a_driver_that_dies_mid_pass_resumes_from_its_committed_chunks(ray_local, tiny, tmp_path):
    """The driver commits each chunk as its rows stream back; killed after two chunks (its chunk
    writer raises SystemExit on the third, as a kill would stop it), the rerun sends only the
    missing rows through Ray and ends with the same features as an uninterrupted pass."""
    from harness.features import Need
    from harness.ray_engine import extract_many_ray_needs
    from harness.store import Store

    specs, split = tiny
    model = load_model(specs[0], "cpu")
    ref = extract(model, split, batch_size=4, num_workers=0)
    store = Store(tmp_path / "store", lambda m: None)

    class Dies:
        def __init__(self, w):
            self.w, self.n = w, 0

        def __getattr__(self, name):
            return getattr(self.w, name)

        def write_chunk(self, *a):
            self.n += 1
            if self.n > 2:
                raise SystemExit("killed")
            return self.w.write_chunk(*a)

    w = store.open_writer("k", len(split))
    w.chunk_dir.mkdir(parents=True, exist_ok=True)
    with pytest.raises(SystemExit):
        extract_many_ray_needs([Need(model, False, Dies(w))], split, batch_size=4, chunk_rows=4)
    done = sum(c.stop - c.start for c in w.completed())
    assert done == 8  # two chunks of four rows committed before the "kill"
    w2 = store.open_writer("k", len(split))
    got = extract_many_ray_needs([Need(model, False, w2)], split, batch_size=4, chunk_rows=4)[0]
    assert got.loader["decoded_rows"] == len(split) - 8 and got.loader["resumed_rows"] == 8
    assert np.abs(got.x - ref.x).max() <= 1e-6
    assert np.array_equal(got.valid, ref.valid)
