"""Sample sizes and 95 % intervals: Wilson against hand-worked values, the bootstrap's seed
determinism and coverage, the k-fold statistic against harness.metrics, n/r operating points."""

import math

import numpy as np
import pytest

from harness.intervals import (
    bootstrap_ci,
    case_statistics,
    contiguous_folds,
    kfold_accuracy,
    sample_sizes,
    wilson,
)
from harness.metrics import verification_accuracy
from harness.scores import ScoreSet


def test_wilson_hand_worked():
    # 8 of 10, z = 1.96: p = .8, z²/n = .38415, denominator 1.38415,
    # centre = (.8 + .19207) / 1.38415 = .71679, half = 1.96 sqrt(.016 + .0096037) / 1.38415 = .22656
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # 0 of 10: [0, z²/(n + z²)] = [0, 3.8415 / 13.8415]
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8414588 / 13.8414588, abs=1e-6)
    with pytest.raises(ValueError):
        wilson(3, 0)


@pytest.mark.parametrize("k,n", [(1, 3), (50, 100), (599, 600), (0, 1), (7, 7)])
def test_wilson_contains_the_proportion_and_stays_in_unit_interval(k, n):
    lo, hi = wilson(k, n)
    assert 0 <= lo <= k / n <= hi <= 1


def test_bootstrap_is_seeded_and_covers_the_truth():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)

    def mean(idx):
        return {"mean": float(x[idx].mean())}
    a = bootstrap_ci(mean, len(x), b=300, seed=5)
    assert a == bootstrap_ci(mean, len(x), b=300, seed=5)
    assert a != bootstrap_ci(mean, len(x), b=300, seed=6)
    # coverage: the 95 % interval of a mean of 100 N(0.3, 1) draws holds 0.3 about 95 % of the time
    hits = 0
    trials = 200
    for t in range(trials):
        y = np.random.default_rng(100 + t).normal(0.3, 1.0, size=100)
        lo, hi = bootstrap_ci(lambda idx, y=y: {"m": float(y[idx].mean())}, len(y), b=200, seed=t)["m"]
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_stratified_bootstrap_keeps_stratum_sizes():
    strata = np.array([1] * 7 + [0] * 3)
    sizes = set()

    def stat(idx):
        sizes.add(int((strata[idx] == 1).sum()))
        return {"s": 0.0}
    bootstrap_ci(stat, 10, strata=strata, b=50)
    assert sizes == {7}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kfold_accuracy_equals_insightface_accuracy(seed):
    rng = np.random.default_rng(seed)
    n = 203
    same = rng.integers(0, 2, size=n).astype(bool)
    e1 = rng.normal(size=(n, 8))
    e2 = np.where(same[:, None], e1 + rng.normal(scale=0.9, size=(n, 8)), rng.normal(size=(n, 8)))
    mean, _ = verification_accuracy(e1, e2, same, n_folds=10)
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    assert kfold_accuracy(cos, same, contiguous_folds(n, 10)) == pytest.approx(mean, abs=1e-12)


def test_contiguous_folds_like_unshuffled_kfold():
    assert contiguous_folds(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_classification_case_gets_wilson_and_n():
    n, ci, how = case_statistics("zeroshot", {"acc1": 0.8, "acc5": 1.0, "mean_per_class_recall": 0.7},
                                 {"n_test": 10})
    assert n == {"images": 10}
    assert ci["acc1"] == pytest.approx(list(wilson(8, 10)))
    assert "mean_per_class_recall" not in ci and how["acc1"].startswith("wilson")


def test_ijb_unresolvable_points_get_no_interval():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(200)].astype(int)
    s = rng.normal(size=240) + 2 * y
    details = {"n_genuine": 40, "n_impostor": 200, "n_templates": 30, "far_rule": "at-most",
               "tar@far=1e-3": {"resolvable": False}, "tar@far=1e-1": {"resolvable": True}}
    n, ci, how = case_statistics("ijb", {"tar@far=1e-3": 0.2, "tar@far=1e-1": 0.8}, details,
                                 ScoreSet(s, y), b=100)
    assert n == {"templates": 30, "genuine_pairs": 40, "impostor_pairs": 200, "pairs": 240}
    assert "tar@far=1e-3" not in ci and "tar@far=1e-1" in ci
    lo, hi = ci["tar@far=1e-1"]
    assert 0 <= lo <= hi <= 1 and "bootstrap" in how["tar@far=1e-1"]


def test_attack_interval_holds_the_point_estimate():
    from harness.protocols import attack

    rng = np.random.default_rng(3)
    y = np.r_[np.ones(60), np.zeros(60)].astype(int)
    s = rng.normal(size=120) + 1.5 * y
    types = np.where(y == 1, "", np.where(np.arange(120) % 2, "m1", "m2"))
    for prot in ("mad", "pad"):
        r = attack.evaluate(prot, s, y, types, None, threshold="test-eer", video_average=False)
        n, ci, how = case_statistics(prot, r.metrics, r.details, ScoreSet(s, y, attack_types=types), b=200)
        assert n["bona_fide"] == 60 and n["attack"] == 60
        lo, hi = ci["eer"]
        assert lo <= r.metrics["eer"] <= hi and hi - lo < 0.4
        assert "re-estimated" in how["eer"]


def test_sample_sizes_from_details():
    assert sample_sizes("mad", {"n_samples": 9, "n_scored": 3, "n_bona_fide": 1, "n_attack": 2}) == {
        "images": 9, "scored": 3, "bona_fide": 1, "attack": 2}
    assert sample_sizes("verification", {"n_pairs": 6000}) == {"pairs": 6000}
    assert math.isclose(len(sample_sizes("linear_probe", {"n_test": 5, "n_train": 7})), 2)
