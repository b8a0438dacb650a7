"""harness.metrics: hand-computed cases, properties, and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

from harness import metrics as M

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------- strategies

@st.composite
def scored(draw, max_size=40, levels=8):
    """Integer-valued scores (many ties) with both classes present."""
    n = draw(st.integers(2, max_size))
    s = draw(st.lists(st.integers(0, levels), min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    assume(0 < sum(y) < n)
    return np.asarray(s, dtype=np.float64), np.asarray(y)


# ------------------------------------------------------------------------- hand-computed cases

# bona fide 0.9, 0.5; attack 0.5, 0.1 -- one bona fide and one attack tied at 0.5
S4 = np.array([0.9, 0.5, 0.5, 0.1])
Y4 = np.array([1, 1, 0, 0])


def test_roc_hand_case_keeps_every_point():
    thr, far, tar = M.roc(S4, Y4)
    assert thr.tolist() == [np.inf, 0.9, 0.5, 0.1]
    assert far.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tar.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_tied_scores_exactly_at_threshold_are_accepted():
    # t = 0.5 accepts both 0.5s: no bona fide rejected, one of two attacks accepted
    assert M.bpcer(S4, Y4, 0.5) == 0.0
    assert M.apcer(S4, Y4, 0.5) == 0.5
    assert M.hter(S4, Y4, 0.5) == 0.25
    assert M.acer(S4, Y4, 0.5) == 0.25
    # just above: the tied pair is rejected together
    assert M.bpcer(S4, Y4, 0.5000001) == 0.5
    assert M.apcer(S4, Y4, 0.5000001) == 0.0
    assert M.bpcer(S4, Y4, 0.9) == 0.5 and M.apcer(S4, Y4, 0.9) == 0.0
    assert M.bpcer(S4, Y4, 0.1) == 0.0 and M.apcer(S4, Y4, 0.1) == 1.0


def test_threshold_free_hand_case():
    # d = FRR - FAR over the ROC: 1, .5, -.5, -1 -> crossing halfway between (0, .5) and (.5, 0)
    assert M.eer(S4, Y4) == 0.25
    # pairs (bona, attack): (.9,.5)=1 (.9,.1)=1 (.5,.5)=.5 (.5,.1)=1 -> 3.5 / 4
    assert M.roc_auc(S4, Y4) == 0.875
    assert M.tar_at_far(S4, Y4, 0.5) == 1.0
    assert M.tar_at_far(S4, Y4, 0.49) == 0.5
    assert M.tar_at_far(S4, Y4, 1.0) == 1.0
    # |d| ties at 0.9 and 0.5: the lower threshold wins
    assert M.eer_threshold(S4, Y4) == 0.5
    assert M.bpcer_at_apcer(S4, Y4, 0.0) == 0.5     # only t in (0.5, 0.9] keeps APCER at 0
    assert M.bpcer_at_apcer(S4, Y4, 0.5) == 0.0
    assert M.apcer_at_bpcer(S4, Y4, 0.0) == 0.5     # BPCER 0 needs t <= 0.5
    assert M.apcer_at_bpcer(S4, Y4, 0.5) == 0.0
    assert all(type(v) is float for v in (M.eer(S4, Y4), M.roc_auc(S4, Y4),
                                          M.tar_at_far(S4, Y4, .1), M.hter(S4, Y4, .5)))


def test_eer_exact_crossing_point_and_all_tied():
    # FRR = FAR = 1/2 exactly at t = 0.5
    assert M.eer([1, 0.5, 0.5, 0], [1, 0, 1, 0]) == 0.25
    assert M.eer([0.3, 0.7, 0.5, 0.1], [1, 1, 0, 0]) == 0.5
    # every score equal: the ROC is the diagonal, EER 0.5, AUC 0.5
    assert M.eer([2, 2, 2, 2], [1, 0, 1, 0]) == 0.5
    assert M.roc_auc([2, 2, 2, 2], [1, 0, 1, 0]) == 0.5
    assert M.eer_threshold([2, 2, 2, 2], [1, 0, 1, 0]) == 2.0


def test_tar_at_far_reaches_k_over_n_exactly():
    # 10 impostors: far = 0.3 allows exactly 3 false accepts
    imp = np.arange(10) / 10.0                  # 0.0 .. 0.9
    gen = np.array([0.95, 0.85, 0.65, 0.55])
    s = np.r_[gen, imp]
    y = np.r_[np.ones(4), np.zeros(10)]
    assert M.tar_at_far(s, y, 0.0999) == 0.25   # 0 false accepts: t = 0.95
    assert M.tar_at_far(s, y, 0.1) == 0.5       # 1 (0.9): t = 0.85
    assert M.tar_at_far(s, y, 0.29999) == 0.5   # 2 (0.9, 0.8): t = 0.8
    assert M.tar_at_far(s, y, 0.3) == 0.75      # 3 (0.9, 0.8, 0.7): t = 0.65
    assert M.tar_at_far(s, y, 0.1 * 3) == 0.75  # 0.30000000000000004 still 3
    assert M.tar_at_far(s, y, 0.5) == 1.0       # t = 0.5


# bona fide 0.8, 0.6; species A: 0.7, 0.2; species B: 0.3, 0.1, 0.05, 0.0
SP = np.array([0.8, 0.6, 0.7, 0.2, 0.3, 0.1, 0.05, 0.0])
YP = np.array([1, 1, 0, 0, 0, 0, 0, 0])
TP = np.array(["", "", "A", "A", "B", "B", "B", "B"])


def test_per_type_max_differs_from_pooled():
    assert M.apcer_per_type(SP, YP, 0.5, TP) == {"A": 0.5, "B": 0.0}
    assert M.apcer(SP, YP, 0.5, TP) == 0.5                       # ISO max over species
    assert M.apcer(SP, YP, 0.5, TP, mode="pooled") == 1 / 6       # 1 of 6 attacks
    assert M.apcer(SP, YP, 0.5) == 1 / 6                          # no types: pooled
    assert M.acer(SP, YP, 0.5, TP) == 0.25                        # (0.5 + 0) / 2
    assert M.hter(SP, YP, 0.5) == 1 / 12                          # (1/6 + 0) / 2
    # APCER <= 0.25: per species A may accept floor(0.5) = 0 -> t in (0.7, 0.8] -> BPCER 1/2;
    # pooled may accept floor(1.5) = 1 attack -> t = 0.6 -> BPCER 0
    assert M.bpcer_at_apcer(SP, YP, 0.25, TP) == 0.5
    assert M.bpcer_at_apcer(SP, YP, 0.25) == 0.0
    # BPCER 0 needs t <= 0.6: species A then has 1 of 2 accepted, pooled 1 of 6
    assert M.apcer_at_bpcer(SP, YP, 0.0, TP) == 0.5
    assert M.apcer_at_bpcer(SP, YP, 0.0) == 1 / 6


# ------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("call, msg", [
    (lambda: M.eer([0.1, 0.2], [1]), "length mismatch"),
    (lambda: M.eer([0.1, 0.2], [1, 1]), "only one class"),
    (lambda: M.roc_auc([0.1, 0.2], [0, 0]), "only one class"),
    (lambda: M.eer([0.1, 0.2], [1, 2]), "labels must be 0 or 1"),
    (lambda: M.eer([0.1, np.nan], [1, 0]), "finite"),
    (lambda: M.eer([[0.1, 0.2]], [1, 0]), "1-D"),
    (lambda: M.eer([], []), "empty"),
    (lambda: M.tar_at_far([0.1, 0.2], [1, 0], 0.0), r"far must be in \(0, 1\]"),
    (lambda: M.tar_at_far([0.1, 0.2], [1, 0], 1.5), r"far must be in \(0, 1\]"),
    (lambda: M.bpcer_at_apcer([0.1, 0.2], [1, 0], -0.1), r"apcer must be in \[0, 1\]"),
    (lambda: M.apcer_at_bpcer([0.1, 0.2], [1, 0], 2), r"bpcer must be in \[0, 1\]"),
    (lambda: M.apcer([0.1, 0.2], [1, 0], 0.1, mode="mean"), "mode must be"),
    (lambda: M.apcer([0.1, 0.2], [1, 0], 0.1, ["a"]), "length mismatch"),
    (lambda: M.hter([0.1, 0.2], [1, 0], float("nan")), "NaN"),
    (lambda: M.verification_accuracy(np.ones((4, 2)), np.ones((4, 3)), [1, 0, 1, 0]), "shape mismatch"),
    (lambda: M.verification_accuracy(np.ones((4, 2)), np.ones((4, 2)), [1, 0]), "length mismatch"),
    (lambda: M.verification_accuracy(np.ones((4, 2)), np.ones((4, 2)), [1, 0, 1, 0]), "cannot fill"),
    (lambda: M.verification_accuracy(np.zeros((20, 2)), np.ones((20, 2)), [1, 0] * 10), "zero-norm"),
])
def test_bad_input_raises_one_line(call, msg):
    with pytest.raises(ValueError, match=msg) as e:
        call()
    assert "\n" not in str(e.value)


def test_one_sided_rates_need_only_their_class():
    assert M.bpcer([0.1, 0.9], [1, 1], 0.5) == 0.5
    assert M.apcer([0.1, 0.9], [0, 0], 0.5) == 0.5
    with pytest.raises(ValueError, match="no genuine"):
        M.bpcer([0.1, 0.9], [0, 0], 0.5)


# ------------------------------------------------------------------------------- properties

@SETTINGS
@given(scored())
def test_eer_symmetric_under_negation_and_label_swap(data):
    s, y = data
    assert M.eer(-s, 1 - y) == pytest.approx(M.eer(s, y), abs=1e-12)


@SETTINGS
@given(scored(), st.sampled_from(["exp", "cube", "affine", "log1p"]), st.floats(0.01, 1.0))
def test_eer_and_tar_invariant_under_increasing_transforms(data, kind, far):
    s, y = data
    f = {"exp": lambda x: np.exp(x / 3.0), "cube": lambda x: (x - 4.0) ** 3,
         "affine": lambda x: 7.0 * x - 2.0, "log1p": np.log1p}[kind]
    g = f(s)
    assert M.eer(g, y) == M.eer(s, y)
    assert M.tar_at_far(g, y, far) == M.tar_at_far(s, y, far)
    assert M.roc_auc(g, y) == M.roc_auc(s, y)


@SETTINGS
@given(st.integers(1, 20), st.integers(1, 20), st.floats(-5, 5), st.floats(0.001, 5))
def test_perfect_separation(n_pos, n_neg, lo, gap):
    s = np.r_[np.full(n_neg, lo), lo + gap + np.arange(n_pos)]
    y = np.r_[np.zeros(n_neg), np.ones(n_pos)]
    assert M.eer(s, y) == 0.0
    assert M.roc_auc(s, y) == 1.0
    assert M.tar_at_far(s, y, 1e-9 + 1e-12) == 1.0
    assert M.hter(s, y, M.eer_threshold(s, y)) == 0.0


@SETTINGS
@given(scored(), st.lists(st.floats(0.001, 1.0), min_size=2, max_size=6))
def test_tar_non_decreasing_in_far(data, fars):
    s, y = data
    fars = sorted(fars)
    tars = [M.tar_at_far(s, y, f) for f in fars]
    assert tars == sorted(tars)


@SETTINGS
@given(scored(), st.lists(st.floats(-1, 10), min_size=2, max_size=6))
def test_apcer_never_rises_bpcer_never_falls_with_threshold(data, ts):
    s, y = data
    ts = sorted(ts)
    ap = [M.apcer(s, y, t) for t in ts]
    bp = [M.bpcer(s, y, t) for t in ts]
    assert ap == sorted(ap, reverse=True)
    assert bp == sorted(bp)


@SETTINGS
@given(scored(), st.lists(st.sampled_from(["a", "b", "c"]), min_size=40, max_size=40),
       st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6))
def test_bpcer_at_apcer_never_rises_as_allowed_apcer_grows(data, types, xs):
    s, y = data
    t = np.asarray(types[: len(s)])
    xs = sorted(xs)
    for at in (None, t):
        b = [M.bpcer_at_apcer(s, y, x, at) for x in xs]
        assert b == sorted(b, reverse=True)
        a = [M.apcer_at_bpcer(s, y, x, at) for x in xs]
        assert a == sorted(a, reverse=True)


@SETTINGS
@given(scored(), st.floats(-1, 10), st.floats(0.0, 1.0))
def test_single_attack_type_per_type_equals_pooled(data, t, x):
    s, y = data
    types = np.where(y == 1, "", "print")
    assert M.apcer(s, y, t, types) == M.apcer(s, y, t, types, mode="pooled") == M.apcer(s, y, t)
    assert M.apcer_per_type(s, y, t, types) == {"print": M.apcer(s, y, t)}
    assert M.bpcer_at_apcer(s, y, x, types) == M.bpcer_at_apcer(s, y, x)
    assert M.apcer_at_bpcer(s, y, x, types) == M.apcer_at_bpcer(s, y, x)


@SETTINGS
@given(scored(), st.floats(0.0, 1.0))
def test_operating_points_brute_force(data, x):
    """BPCER@APCER / APCER@BPCER against a scan of every threshold (max over types)."""
    s, y = data
    types = np.where(np.arange(len(s)) % 2 == 0, "a", "b")
    cands = np.r_[np.inf, np.unique(s)]
    best_b, best_a = 1.0, 1.0
    for t in cands:
        per = [np.sum((s >= t) & (y == 0) & (types == k)) / np.sum((y == 0) & (types == k))
               for k in ("a", "b") if np.any((y == 0) & (types == k))]
        a = max(per)
        b = np.mean(s[y == 1] < t)
        if a <= x + 1e-12:
            best_b = min(best_b, b)
        if b <= x + 1e-12:
            best_a = min(best_a, a)
    assert M.bpcer_at_apcer(s, y, x, types) == pytest.approx(best_b, abs=1e-12)
    assert M.apcer_at_bpcer(s, y, x, types) == pytest.approx(best_a, abs=1e-12)


# -------------------------------------------------------------- agreement with scikit-learn

def _eer_reference(fpr, tpr):
    """Independent EER: intersect each ROC segment with TAR = 1 - FAR, keep the first hit."""
    for i in range(1, len(fpr)):
        x0, y0, x1, y1 = fpr[i - 1], tpr[i - 1], fpr[i], tpr[i]
        g0, g1 = x0 + y0 - 1.0, x1 + y1 - 1.0      # signed offset from the anti-diagonal
        if g0 <= 0.0 <= g1:
            if g1 == g0:
                return x0
            u = -g0 / (g1 - g0)
            return x0 + u * (x1 - x0)
    raise AssertionError("no crossing")


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + 0.8 * y
    if seed % 2:                                   # coarse scores: many ties
        s = np.round(s, 1)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    t, far, tar = M.roc(s, y)
    np.testing.assert_allclose(far, fpr, atol=1e-15)
    np.testing.assert_allclose(tar, tpr, atol=1e-15)
    np.testing.assert_array_equal(t[1:], thr[1:])
    assert M.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.eer(s, y) == pytest.approx(_eer_reference(fpr, tpr), abs=1e-12)
    for f in (0.01, 0.05, 0.1, 0.3, 1.0):
        ref = tpr[fpr <= f].max()
        assert M.tar_at_far(s, y, f) == pytest.approx(ref, abs=1e-15)
        assert M.bpcer_at_apcer(s, y, f) == pytest.approx(1 - ref, abs=1e-15)
    # the EER threshold yields an HTER within one ROC step of the EER
    h = M.hter(s, y, M.eer_threshold(s, y))
    step = 1.0 / min(int(y.sum()), int(n - y.sum()))
    assert abs(h - M.eer(s, y)) <= step


# ---------------------------------------------------------------------------- verification

def _pairs_with_distances(d):
    """Unit-vector pairs in 2-D whose squared L2 distance is d (= 2 - 2 cos theta)."""
    theta = np.arccos(1.0 - np.asarray(d) / 2.0)
    e1 = np.tile([1.0, 0.0], (len(d), 1))
    e2 = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return e1, e2


def test_verification_threshold_is_chosen_on_the_other_folds():
    # fold 1: same .505 .605, different 1.505 1.605 -> perfectly separable, t in (.605, 1.505]
    # fold 2: same 1.005 1.205, different 1.105 2.005
    d = [0.505, 1.505, 0.605, 1.605, 1.005, 1.105, 1.205, 2.005]
    same = [1, 0, 1, 0, 1, 0, 1, 0]
    e1, e2 = _pairs_with_distances(d)
    mean, std = M.verification_accuracy(e1 * 3.0, e2 * 0.5, same, n_folds=2)  # norms irrelevant
    # fold 2 held out: first best on fold 1 is t = 0.61 -> fold 2 gets 2/4 right.
    # fold 1 held out: first best on fold 2 is t = 1.01 -> fold 1 gets 4/4 right.
    assert (mean, std) == (0.75, 0.25)
    # choosing on the held-out fold itself would give fold 2 3/4 (t in (1.005, 1.105]): 0.875
    assert mean != 0.875


def _insightface_style(e1, e2, issame, n_folds):
    """Straightforward re-statement: KFold(shuffle=False), 400 thresholds, argmax on train."""
    e1 = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = e2 / np.linalg.norm(e2, axis=1, keepdims=True)
    dist = np.sum((e1 - e2) ** 2, axis=1)
    thresholds = np.arange(0, 4, 0.01)
    accs = []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(dist):
        acc_train = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accs.append(np.mean((dist[test] < best) == issame[test]))
    return np.mean(accs), np.std(accs)


@pytest.mark.parametrize("n, folds", [(300, 10), (97, 10), (40, 3)])
def test_verification_matches_reference_statement(n, folds):
    rng = np.random.default_rng(n)
    e1 = rng.normal(size=(n, 8))
    issame = rng.integers(0, 2, n).astype(bool)
    e2 = np.where(issame[:, None], e1 + rng.normal(scale=0.9, size=(n, 8)), rng.normal(size=(n, 8)))
    mean, std = M.verification_accuracy(e1, e2, issame, n_folds=folds)
    ref_mean, ref_std = _insightface_style(e1, e2, issame, folds)
    assert mean == pytest.approx(ref_mean, abs=1e-12)
    assert std == pytest.approx(ref_std, abs=1e-12)
    assert type(mean) is float and type(std) is float


@SETTINGS
@given(st.integers(0, 10_000), st.integers(10, 60))
def test_verification_invariant_to_swapping_pair_images(seed, n):
    rng = np.random.default_rng(seed)
    e1 = rng.normal(size=(n, 4))
    e2 = rng.normal(size=(n, 4))
    issame = rng.integers(0, 2, n)
    assert M.verification_accuracy(e1, e2, issame) == M.verification_accuracy(e2, e1, issame)
