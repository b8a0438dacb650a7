"""Metric rules ``madation`` and ``foundpad``: equal to the upstream evaluation code.

The reference functions below are written here from the upstream repositories' code
(gurayozgur/MADation ``src/utils/utils.py`` ``evaluate_mad_performance`` and the z-normalisation
in ``src/training/trainer.py``; gurayozgur/FoundPAD ``src/utils/utils.py``
``performances_cross_db`` and ``compute_video_score``), calling scikit-learn directly.  Label 1 =
bona fide and score = P(bona fide) there too (``roc_curve(..., pos_label=1)``), so no flip is
needed between the two conventions.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, roc_curve

from harness import metrics as M
from harness.errors import SuiteError
from harness.protocols import PROTOCOLS
from harness.protocols import attack as A
from harness.suite import parse_suite

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TARGETS = (0.01, 0.1, 0.2)


# ------------------------------------------------------------------------------ references

def znorm(s):
    s = np.asarray(s)
    stats = [np.mean(s), np.std(s)]
    return (s - stats[0]) / stats[1]


def madation_ref(scores, labels):
    """MADation: z-normalise, then evaluate_mad_performance."""
    fpr, tpr, _ = roc_curve(labels, znorm(scores), pos_label=1)
    apcer, bpcer = fpr, 1 - tpr
    out = {"eer": fpr[np.nanargmin(np.abs(tpr + fpr - 1.0))], "auc": auc(fpr, tpr)}
    for op in TARGETS:
        temp = abs(bpcer - op)
        out[f"apcer@bpcer={op:g}"] = apcer[np.where(temp == np.min(temp))[0][-1]]
        out[f"bpcer@apcer={op:g}"] = bpcer[np.argmin(abs(apcer - op))]
    return out


def video_means_ref(video_ids, predictions, labels):
    """FoundPAD compute_video_score (videos in sorted order; upstream's set order only moves
    the later mean/std by rounding)."""
    pred, lab = defaultdict(list), defaultdict(list)
    for v, p, y in zip(video_ids, predictions, labels):
        pred[v].append(p)
        lab[v].append(y)
    vids = sorted(pred)
    return np.array([np.mean(pred[v]) for v in vids]), np.array([lab[v][0] for v in vids])


def foundpad_ref(scores, labels):
    """FoundPAD: z-normalise, then performances_cross_db."""
    fpr, tpr, _ = roc_curve(labels, znorm(scores), pos_label=1)
    i = np.nanargmin(np.abs(tpr + fpr - 1.0))
    frr = 1 - tpr
    hter = (fpr + frr) / 2.0
    return {"auc": auc(fpr, tpr), "apcer": fpr[i], "bpcer": frr[i], "hter": hter[i], "eer": fpr[i]}


# ------------------------------------------------------------------------------ strategies

@st.composite
def scored(draw, max_size=40):
    """Scores with ties, saturated values (z-normalisation merges 1e-30 and 2e-30) or none."""
    n = draw(st.integers(2, max_size))
    kind = draw(st.sampled_from(["ties", "saturated", "float"]))
    if kind == "ties":
        elem = st.integers(0, 6).map(float)
    elif kind == "saturated":
        elem = st.sampled_from([0.0, 1e-30, 2e-30, 1e-12, 0.5, 1 - 1e-12, 1.0])
    else:
        elem = st.floats(0, 1, allow_nan=False)
    s = np.asarray(draw(st.lists(elem, min_size=n, max_size=n)), dtype=np.float64)
    y = np.asarray(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    assume(0 < y.sum() < n and np.std(s) > 0)
    return s, y


def close(a, b):
    return abs(float(a) - float(b)) <= 1e-12


# --------------------------------------------------------------------------- metrics level

@SETTINGS
@given(scored())
def test_reduced_roc_is_sklearn_roc_curve_of_z_scores(data):
    s, y = data
    thr, fpr, tpr = M.rule_roc(s, y)
    fpr_ref, tpr_ref, thr_ref = roc_curve(y, znorm(s), pos_label=1)
    assert np.array_equal(fpr, fpr_ref) and np.array_equal(tpr, tpr_ref)
    # each raw threshold accepts exactly the samples sklearn's z threshold accepts
    z = znorm(s)
    for t, tz in zip(thr, thr_ref):
        assert np.array_equal(s >= t, z >= tz)


@SETTINGS
@given(scored())
def test_madation_rule_equals_madation_code(data):
    s, y = data
    ref = madation_ref(s, y)
    assert close(M.eer(s, y, rule="madation"), ref["eer"])
    assert close(M.roc_auc(s, y, rule="madation"), ref["auc"])
    for op in TARGETS:
        assert close(M.bpcer_at_apcer(s, y, op, rule="madation"), ref[f"bpcer@apcer={op:g}"])
        assert close(M.apcer_at_bpcer(s, y, op, rule="madation"), ref[f"apcer@bpcer={op:g}"])


@SETTINGS
@given(scored())
def test_foundpad_rule_equals_foundpad_code(data):
    s, y = data
    ref = foundpad_ref(s, y)
    p = M.eer_point(s, y, "foundpad")
    assert close(p.eer, ref["eer"]) and close(M.eer(s, y, rule="foundpad"), ref["eer"])
    assert close(p.apcer, ref["apcer"]) and close(p.bpcer, ref["bpcer"])
    assert close(p.hter, ref["hter"]) and close(p.auc, ref["auc"])
    # the raw threshold reproduces the point with the harness's own rates (accept s >= t)
    assert close(M.apcer(s, y, p.threshold), p.apcer)
    assert close(M.bpcer(s, y, p.threshold), p.bpcer)
    assert M.eer_threshold(s, y, rule="foundpad") == p.threshold


def test_float32_scores_are_normalised_in_float32():
    """Upstream scores are float32 tensors turned numpy: mean, std and z stay float32."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(4, 60))
        s = (rng.random(n) ** 8).astype(np.float32)
        y = rng.integers(0, 2, n)
        if not 0 < y.sum() < n:
            continue
        ref = madation_ref(s, y)
        assert M.eer(s, y, rule="madation") == ref["eer"]
        assert M.bpcer_at_apcer(s, y, 0.1, rule="madation") == ref["bpcer@apcer=0.1"]


def test_hand_case_nearest_points_and_ties():
    # bona fide 0.9 0.8 0.5; attacks 0.5 0.3 0.2 (a tie at 0.5)
    s = np.array([0.9, 0.8, 0.5, 0.5, 0.3, 0.2])
    y = np.array([1, 1, 1, 0, 0, 0])
    _, fpr, tpr = M.rule_roc(s, y)
    # sklearn's reduction runs before the (0, 0) point is prepended: of the score points
    # 0.9 0.8 0.5 0.3 0.2 only 0.3 is collinear -> (0,0) (0,1/3) (0,2/3) (1/3,1) (1,1)
    assert np.allclose(fpr, [0, 0, 0, 1 / 3, 1]) and np.allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    # |tpr + fpr - 1| = 1, 2/3, 1/3, 1/3, 1: a tie decided by rounding (2/3 - 1 is
    # -0.33333333333333337, 1/3 + 1 - 1 is 0.33333333333333326): index 3, EER = 1/3
    # (ISO: the curves cross between 0.8 and 0.5, interpolated EER 1/6)
    assert M.eer(s, y, rule="madation") == pytest.approx(1 / 3)
    assert M.eer(s, y) == pytest.approx(1 / 6)
    # BPCER@APCER=0.2: APCER nearest 0.2 is 1/3 (index 3): BPCER 0 (ISO: APCER <= 0.2 -> 1/3)
    assert M.bpcer_at_apcer(s, y, 0.2, rule="madation") == 0.0
    assert M.bpcer_at_apcer(s, y, 0.2) == pytest.approx(1 / 3)
    # APCER@BPCER=0.2: BPCER 1, 2/3, 1/3, 0, 0; nearest 0.2 is 1/3 (index 2): APCER 0
    assert M.apcer_at_bpcer(s, y, 0.2, rule="madation") == 0.0


def test_single_class_and_constant_scores_raise_like_upstream():
    s = np.array([0.2, 0.4, 0.9])
    for y in (np.ones(3, int), np.zeros(3, int)):
        # upstream: roc_curve gives NaN rates and nanargmin fails on the all-NaN slice
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError):
                madation_ref(s, y)
        for rule in ("madation", "foundpad"):
            with pytest.raises(ValueError, match="only one class"):
                M.eer(s, y, rule=rule)
    with pytest.raises(ValueError, match="std 0"):
        M.eer(np.full(4, 0.7), np.array([1, 0, 1, 0]), rule="madation")


def test_rule_argument_errors():
    s, y = np.array([0.1, 0.9, 0.4]), np.array([0, 1, 0])
    with pytest.raises(ValueError, match="rule must be one of 'iso', 'madation', 'foundpad'"):
        M.eer(s, y, rule="sklearn")
    with pytest.raises(ValueError, match="'foundpad' defines no BPCER@APCER"):
        M.bpcer_at_apcer(s, y, 0.1, rule="foundpad")
    with pytest.raises(ValueError, match="attack_types only applies to rule 'iso'"):
        M.apcer_at_bpcer(s, y, 0.1, attack_types=["a", "b", "a"], rule="madation")


def test_iso_default_is_unchanged():
    rng = np.random.default_rng(0)
    s, y = rng.random(50), rng.integers(0, 2, 50)
    assert M.eer(s, y) == M.eer(s, y, rule="iso")
    assert M.bpcer_at_apcer(s, y, 0.1) == M.bpcer_at_apcer(s, y, 0.1, rule="iso")
    assert M.roc_auc(s, y) == M.roc_auc(s, y, rule="iso")


# -------------------------------------------------------------------------- protocol level

@st.composite
def morph_sets(draw):
    s, y = draw(scored(max_size=50))
    n_att = int((y == 0).sum())
    methods = draw(st.lists(st.sampled_from(["opencv", "mipgan", "webmorph"]),
                            min_size=n_att, max_size=n_att))
    types = np.array([""] * len(y), dtype=object)
    types[y == 0] = methods
    for m in set(methods):     # every method's subset needs spread scores (std > 0)
        sub = s[(y == 1) | (types == m)]
        assume(np.std(sub) > 0)
    return s, y, types


@SETTINGS
@given(morph_sets())
def test_mad_protocol_madation_per_method_and_average(data):
    s, y, types = data
    res = A.evaluate_mad(s, y, types, metric_rule="madation", operating_points=TARGETS)
    methods = sorted(set(types[y == 0]))
    refs = {m: madation_ref(s[(y == 1) | (types == m)], y[(y == 1) | (types == m)]) for m in methods}
    for m in methods:
        for k, v in refs[m].items():
            assert close(res.metrics[f"{k}[{m}]"], v), (m, k)
    for k in refs[methods[0]]:
        assert close(res.metrics[k], np.mean([refs[m][k] for m in methods])), k
    assert res.details["metric_rule"] == "madation"
    assert res.details["threshold_source"] == "test-eer"


@st.composite
def video_sets(draw):
    n_vid = draw(st.integers(3, 12))
    labels = draw(st.lists(st.integers(0, 1), min_size=n_vid, max_size=n_vid))
    assume(0 < sum(labels) < n_vid)
    frames = draw(st.lists(st.integers(1, 5), min_size=n_vid, max_size=n_vid))
    elem = st.sampled_from([0.0, 1e-30, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1)
    s, y, vids, types = [], [], [], []
    for v in range(n_vid):
        for _ in range(frames[v]):
            s.append(draw(elem))
            y.append(labels[v])
            vids.append(f"vid{v:02d}")
            types.append("" if labels[v] else ("print" if v % 2 else "replay"))
    order = draw(st.permutations(range(len(s))))        # frames interleaved, as listed on disk
    s, y, vids, types = (np.asarray(a)[list(order)] for a in (s, y, vids, types))
    means, _ = video_means_ref(vids, s, y)
    assume(np.std(means) > 0)
    return s.astype(np.float64), y, vids, types


@SETTINGS
@given(video_sets())
def test_pad_protocol_foundpad_equals_foundpad_code(data):
    s, y, vids, types = data
    res = A.evaluate_pad(s, y, types, vids, metric_rule="foundpad", threshold="test-eer")
    vs, vy = video_means_ref(vids, s, y)
    ref = foundpad_ref(vs, vy)
    for k in ("eer", "auc", "hter", "apcer", "bpcer"):
        assert close(res.metrics[k], ref[k]), k
    assert close(res.metrics["acer"], ref["hter"])
    assert res.details["metric_rule"] == "foundpad"
    assert res.details["operating_point_rule"] == "iso"
    assert res.details["threshold_source"] == "test-eer"
    assert res.details["n_scored"] == len(vs)
    # FoundPAD defines no operating points: those are the ISO ones on the video scores
    assert res.metrics["bpcer@apcer=0.1"] == M.bpcer_at_apcer(vs, vy, 0.1, None)


def test_pad_foundpad_float32_video_means_like_upstream():
    rng = np.random.default_rng(5)
    vids = np.repeat([f"v{i}" for i in range(20)], 9)
    y = np.repeat(rng.integers(0, 2, 20), 9)
    y[:9], y[9:18] = 1, 0
    s = rng.random(len(y)).astype(np.float32)
    res = A.evaluate_pad(s, y, None, vids, metric_rule="foundpad")
    # upstream: np.mean over a list of float32 scalars -> float32, then z in float32
    pred = defaultdict(list)
    for v, p in zip(vids, s):
        pred[v].append(p)
    vs = np.array([np.mean(pred[v]) for v in sorted(pred)])
    assert vs.dtype == np.float32
    ref = foundpad_ref(vs, np.array([y[vids == v][0] for v in sorted(pred)]))
    assert res.metrics["hter"] == ref["hter"] and res.metrics["auc"] == ref["auc"]


def test_dev_eer_threshold_under_a_rule():
    rng = np.random.default_rng(2)
    ds, dy = rng.random(40), rng.integers(0, 2, 40)
    s, y = rng.random(30), rng.integers(0, 2, 30)
    res = A.evaluate_pad(s, y, threshold="dev-eer", dev_scores=ds, dev_labels=dy,
                         metric_rule="foundpad")
    t = M.eer_point(ds, dy, "foundpad").threshold
    assert res.details["threshold"] == t and res.details["threshold_source"] == "dev-eer"
    assert res.metrics["apcer"] == M.apcer(s, y, t) and res.metrics["bpcer"] == M.bpcer(s, y, t)
    assert close(res.metrics["eer"], foundpad_ref(s, y)["eer"])


def test_default_rule_is_iso_and_recorded():
    rng = np.random.default_rng(4)
    s, y = rng.random(30), rng.integers(0, 2, 30)
    res = A.evaluate_pad(s, y)
    assert res.details["metric_rule"] == "iso" and "operating_point_rule" not in res.details
    assert res.metrics["eer"] == M.eer(s, y)
    with pytest.raises(ValueError, match="metric_rule must be one of"):
        A.evaluate_pad(s, y, metric_rule="MADation")


# ------------------------------------------------------------------------------ suite option

SUITE = """
[models.m]
arch = "ViT-B-16"
pretrained = "openai"

[datasets.morphs]
type = "mad"
format = "mad-folders"
root = "/data/morphs"
protocols = ["mad"]
metric_rule = "RULE"
"""


def test_metric_rule_is_a_suite_option_of_mad_and_pad():
    for p in ("mad", "pad"):
        opt = PROTOCOLS[p].options["metric_rule"]
        assert opt.default == "iso" and opt.choices == ("iso", "madation", "foundpad")
    s = parse_suite(SUITE.replace("RULE", "madation"), "/suites/s.toml", Path("/suites"))
    assert s.datasets["morphs"].option("metric_rule") == "madation"
    with pytest.raises(SuiteError) as ei:
        parse_suite(SUITE.replace("RULE", "sklearn"), "/suites/s.toml", Path("/suites"))
    msg = str(ei.value)
    assert "metric_rule" in msg and "'iso', 'madation', 'foundpad'" in msg and "\n" not in msg
