"""Per-worker devices and CPU shares for pytest -n N."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.devices import cpu_share, parse_device, pick_device, worker_index
from harness.errors import HarnessError


def test_worker_index():
    assert worker_index("gw0") == 0 and worker_index("gw12") == 12
    assert worker_index(None) is None and worker_index("master") is None


@pytest.mark.parametrize("req,worker,n,expected", [
    ("cuda", None, 4, "cuda"),            # not under xdist: torch's current device
    ("cuda", 0, 4, "cuda:0"), ("cuda", 3, 4, "cuda:3"), ("cuda", 5, 4, "cuda:1"),
    ("cuda", 2, 1, "cuda"),               # one GPU: every worker shares it
    ("cuda:1,3", 0, 4, "cuda:1"), ("cuda:1,3", 1, 4, "cuda:3"), ("cuda:1,3", 2, 4, "cuda:1"),
    ("cuda:2", None, 4, "cuda:2"),
    ("cpu", 3, 0, "cpu"), ("mps", 1, 0, "mps"),
])
def test_pick_device(req, worker, n, expected):
    assert pick_device(req, worker, n) == expected


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:a", "cuda:0,,1", "", "cpu:0", "mps:1"])
def test_bad_device(bad):
    with pytest.raises(HarnessError, match="expected cpu, cuda"):
        parse_device(bad)


def test_cpu_shares_hand_worked():
    cpus = list(range(16))
    assert [cpu_share(cpus, k, 4) for k in range(4)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert [cpu_share([0, 1], k, 3) for k in range(3)] == [[0], [1], [0]]
    assert cpu_share(cpus, None, None) == cpus


@given(st.integers(1, 64), st.integers(1, 64))
def test_cpu_shares_partition_the_cores(ncpu, nw):
    cpus = list(range(ncpu))
    shares = [cpu_share(cpus, k, nw) for k in range(nw)]
    assert all(shares)
    if nw <= ncpu:
        flat = [c for s in shares for c in s]
        assert sorted(flat) == cpus  # disjoint and complete
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
