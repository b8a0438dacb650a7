"""--shard I/N: a deterministic partition of the cases, one model per shard where possible."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.shard import ShardError, assign, parse_shard


@pytest.mark.parametrize("text", ["3/2", "x", "0/2", "1/0", "1/", "/2", "-1/2", "1.5/2"])
def test_bad_shard_values_are_usage_errors(text):
    with pytest.raises(ShardError, match="expected I/N with 1 <= I <= N"):
        parse_shard(text)


def test_parse():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)


cases_st = st.lists(st.tuples(st.sampled_from(["zeroshot", "mad", "ijb"]),
                              st.sampled_from(["m1", "m2", "m3", "m4", "m5"]),
                              st.sampled_from(["a", "b", "c", "d"])), unique=True, max_size=40)


@settings(max_examples=200, deadline=None)
@given(cases_st, st.integers(1, 6))
def test_partition_is_complete_disjoint_and_order_free(cases, n):
    a = assign(cases, n)
    assert set(a) == set(cases) and all(1 <= k <= n for k in a.values())
    assert assign(list(reversed(cases)), n) == a


@settings(max_examples=200, deadline=None)
@given(cases_st, st.integers(1, 6))
def test_a_model_stays_in_one_shard_when_models_suffice(cases, n):
    models = {c[1] for c in cases}
    a = assign(cases, n)
    if len(models) >= n:
        for m in models:
            assert len({k for c, k in a.items() if c[1] == m}) == 1


def test_fewer_models_than_shards_keeps_every_shard_busy():
    cases = [(p, m, d) for p, m, d in itertools.product(["zeroshot"], ["m1", "m2"], "abcd")]
    a = assign(cases, 4)
    assert sorted(list(a.values()).count(k) for k in (1, 2, 3, 4)) == [2, 2, 2, 2]
    # a model's cases on one dataset stay together
    assert len({a[c] for c in cases if c[1] == "m1" and c[2] == "a"}) == 1


def test_balance_by_case_count():
    cases = [("zeroshot", m, d) for m, n in (("big", 6), ("mid", 3), ("s1", 2), ("s2", 1))
             for d in "abcdef"[:n]]
    a = assign(cases, 2)
    loads = [list(a.values()).count(k) for k in (1, 2)]
    assert loads == [6, 6]


def test_a_results_dir_is_claimed_by_one_shard(tmp_path):
    from harness.shard import claim_results_dir

    claim_results_dir(tmp_path / "r", 1, 2)
    claim_results_dir(tmp_path / "r", 1, 2)  # the same shard again: fine
    with pytest.raises(ShardError, match=r"already used by shard 1/2"):
        claim_results_dir(tmp_path / "r", 2, 2)
