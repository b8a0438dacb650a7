"""InsightFace verification extras: VAL@FAR (calculate_val), accuracy without flip, XNorm.

The references are written here from deepinsight/insightface
``recognition/arcface_torch/eval/verification.py`` (``calculate_val``, ``calculate_val_far``,
``calculate_roc``, ``test``), loop for loop.  InsightFace interpolates the threshold with
``scipy.interpolate.interp1d(far_train, thresholds, kind="slinear")``; ``far_train`` always has
repeated values, which scipy <= 1.8 accepted and later versions refuse ("Expect x to not have
duplicates", scipy issue #21550).  What scipy <= 1.8 built there is the order-1 B-spline with
knots ``[x0, x0, x1, ..., xn, xn]`` and the ``y`` as coefficients (``make_interp_spline``'s k=1
special case); the reference builds exactly that with ``BSpline.construct_fast``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from harness import metrics as M
from harness.protocols import verification as V

# ------------------------------------------------------------------------------ references

def interp1d_slinear_old_scipy(x, y, x0):
    ind = np.argsort(x, kind="mergesort")
    x, y = x[ind], y[ind]
    if x0 < x[0] or x0 > x[-1]:
        raise ValueError("out of bounds")
    return BSpline.construct_fast(np.r_[x[0], x, x[-1]], np.ascontiguousarray(y, float), 1)(x0)


def calculate_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    return float(true_accept) / float(n_same), float(false_accept) / float(n_diff)


def calculate_val_ref(embeddings1, embeddings2, actual_issame, far_target, nrof_folds=10):
    thresholds = np.arange(0, 4, 0.001)
    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    k_fold = KFold(n_splits=nrof_folds, shuffle=False)
    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(np.arange(len(actual_issame)))):
        # calculate_val_far at every threshold, broadcast instead of a Python loop
        d_tr, s_tr = dist[train_set], actual_issame[train_set]
        predict = np.less(d_tr[None, :], thresholds[:, None])
        far_train = (np.sum(predict & ~s_tr[None, :], axis=1).astype(float)
                     / float(np.sum(~s_tr)))
        if np.max(far_train) >= far_target:
            threshold = interp1d_slinear_old_scipy(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        val[fold_idx], far[fold_idx] = calculate_val_far(threshold, dist[test_set],
                                                         actual_issame[test_set])
    return np.mean(val), np.std(val), np.mean(far)


def calculate_roc_acc_ref(embeddings1, embeddings2, actual_issame, nrof_folds=10):
    thresholds = np.arange(0, 4, 0.01)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    accuracy = np.zeros(nrof_folds)

    def acc(threshold, d, same):
        p = np.less(d, threshold)
        tp = np.sum(p & same)
        tn = np.sum(~p & ~same)
        return float(tp + tn) / d.size

    for f, (tr, te) in enumerate(KFold(n_splits=nrof_folds, shuffle=False).split(dist)):
        acc_train = np.array([acc(t, dist[tr], actual_issame[tr]) for t in thresholds])
        accuracy[f] = acc(thresholds[np.argmax(acc_train)], dist[te], actual_issame[te])
    return np.mean(accuracy), np.std(accuracy)


def xnorm_ref(embeddings_list):
    _xnorm, _xnorm_cnt = 0.0, 0
    for embed in embeddings_list:
        for i in range(embed.shape[0]):
            _xnorm += np.linalg.norm(embed[i])
            _xnorm_cnt += 1
    return _xnorm / _xnorm_cnt


# ------------------------------------------------------------------------------- test data

def pairs(seed, n_pairs=200, dim=8, p_same=0.5, noise=0.8):
    """Raw (unnormalised) plain and mirrored float32 embeddings of 2N images, and issame."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < p_same
    issame[0::6], issame[3::6] = True, False      # both kinds of pair in every fold
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.normal(size=(n_pairs, dim)),
                 rng.normal(size=(n_pairs, dim)))
    plain = np.empty((2 * n_pairs, dim))
    plain[0::2], plain[1::2] = a, b
    plain *= rng.uniform(5, 30, size=(2 * n_pairs, 1))      # raw norms, as a network gives
    mirror = plain + 0.3 * rng.normal(size=plain.shape) * np.abs(plain).mean()
    return plain.astype(np.float32), mirror.astype(np.float32), issame


# --------------------------------------------------------------------------------- VAL@FAR

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.sampled_from([1e-3, 0.02, 0.1, 0.3]),
       st.sampled_from([0.3, 0.8, 1.5]), st.sampled_from([5, 10]))
def test_val_equals_insightface_calculate_val(seed, far, noise, folds):
    plain, _, issame = pairs(seed, n_pairs=120, noise=noise)
    e = normalize(plain.astype(np.float64))
    ref = calculate_val_ref(e[0::2], e[1::2], issame, far, folds)
    got = M.verification_val(plain[0::2], plain[1::2], issame, far, n_folds=folds)
    assert np.max(np.abs(np.array(got) - np.array(ref))) <= 1e-12, (got, ref)


def test_val_edge_cases_like_insightface():
    # identical genuine pairs (distance 0), antipodal impostors (distance 4: never accepted)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 4))
    issame = np.arange(40) % 2 == 0
    b = np.where(issame[:, None], a, -a)
    ref = calculate_val_ref(normalize(a), normalize(b), issame, 1e-3, 10)
    got = M.verification_val(a, b, issame, 1e-3)
    assert got == pytest.approx(ref, abs=1e-12)
    assert got[0] == 0.0       # max FAR on the training folds < 1e-3: threshold 0, nothing accepted
    # a fold without impostor pairs: InsightFace divides by zero; here one ValueError
    with pytest.raises(ValueError, match="fold 0 of 10: VAL needs genuine and impostor"):
        M.verification_val(a, b, np.r_[np.ones(4, bool), issame[4:]])


def test_interpolation_matches_old_scipy_at_repeated_values_and_the_right_end():
    rng = np.random.default_rng(1)
    thr = np.arange(0, 4, 0.001)
    n = 0
    for it in range(400):
        d = np.sort(np.round(rng.random(int(rng.integers(1, 30))) * 4, 2))
        if it % 4 == 0:
            d = np.sort(np.r_[d, [3.9995] * 2])     # max FAR < 1 and repeated at the end
        far = np.searchsorted(d, thr, side="left") / len(d)
        for x0 in (1e-3, far[int(rng.integers(0, 4000))], far.max(), 0.0):
            if x0 <= far.max():
                assert M._interp_slinear(far, thr, x0) == interp1d_slinear_old_scipy(far, thr, x0)
                n += 1
    assert n > 1200


# ------------------------------------------------------------------ protocol: noflip, XNorm

def test_protocol_reports_val_noflip_accuracy_and_xnorm():
    plain, mirror, issame = pairs(7, n_pairs=300)
    fused = plain + mirror                          # float32, as the feature stage fuses
    metrics, details = V.evaluate_with_details(fused, issame, embeddings_noflip=plain)
    ef = normalize(fused.astype(np.float64))
    ep = normalize(plain.astype(np.float64))
    acc, _ = calculate_roc_acc_ref(ef[0::2], ef[1::2], issame)
    acc0, std0 = calculate_roc_acc_ref(ep[0::2], ep[1::2], issame)
    val, val_std, val_far = calculate_val_ref(ef[0::2], ef[1::2], issame, 1e-3)
    assert metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert metrics["accuracy_noflip"] == pytest.approx(acc0, abs=1e-12)
    assert details["accuracy_noflip_std"] == pytest.approx(std0, abs=1e-12)
    assert metrics["val@far=1e-3"] == pytest.approx(val, abs=1e-12)
    assert details["val_std@far=1e-3"] == pytest.approx(val_std, abs=1e-12)
    assert details["val_far@far=1e-3"] == pytest.approx(val_far, abs=1e-12)
    # XNorm over the 4N raw vectors; the mirrors are recovered as fused - plain, so the
    # float32 rounding of the fused sum is the only difference
    ref = xnorm_ref([plain.astype(np.float64), mirror.astype(np.float64)])
    assert details["xnorm"] == pytest.approx(ref, rel=1e-6)
    assert details["xnorm"] != pytest.approx(xnorm_ref([fused.astype(np.float64)]), rel=1e-3)
    assert V.evaluate(fused, issame, embeddings_noflip=plain).metrics == metrics
    assert all(isinstance(v, float) for v in metrics.values())


def test_protocol_without_noflip_embeddings():
    plain, _, issame = pairs(8, n_pairs=100)
    metrics, details = V.evaluate_with_details(plain, issame)
    assert "accuracy_noflip" not in metrics
    assert details["xnorm"] == pytest.approx(xnorm_ref([plain.astype(np.float64)]), rel=1e-12)
    # too few pairs for VAL: a fold without impostors leaves the metric out, with the reason
    m2, d2 = V.evaluate_with_details(plain[:40], np.ones(20, bool), n_folds=2)
    assert "val@far=1e-3" not in m2 and d2["val@far=1e-3"].startswith("not computed: fold 0")
    with pytest.raises(ValueError, match="embeddings_noflip has shape"):
        V.evaluate(plain, issame, embeddings_noflip=plain[:10])
