"""Biometric error rates on numpy arrays.

Conventions (the whole harness):

* ``labels``: 1 = genuine / bona fide, 0 = impostor / attack (booleans accepted).
* ``scores``: higher = more genuine / bona fide.
* A threshold ``t`` accepts a sample as genuine / bona fide iff ``score >= t`` (a score tied
  with the threshold is accepted).

With ``P`` genuine and ``N`` impostor samples and a threshold ``t``::

    TAR(t)   = #{genuine  : s >= t} / P          BPCER(t) = FRR(t) = 1 - TAR(t)
    FAR(t)   = #{impostor : s >= t} / N          APCER(t) = FAR(t)  (pooled over attack types)

Every threshold-free metric is computed on the full ROC returned by :func:`roc`: one point per
distinct score (plus the reject-all point), no point dropped, from one sort of the scores, so
10**7 scores take a few seconds.  Operating-point lookups (``FAR <= far`` and the like) are
done on integer counts, so ``far = k / N`` reaches the point with exactly ``k`` false accepts.

Every function validates its inputs (``ValueError``, one line, naming what is wrong) and
returns plain Python floats.

Metric rules (``rule=`` on :func:`eer`, :func:`eer_threshold`, :func:`roc_auc`,
:func:`bpcer_at_apcer`, :func:`apcer_at_bpcer`; :func:`eer_point`):

* ``"iso"`` (default): the definitions above (ISO/IEC 30107-3 operating points, interpolated
  EER on the full ROC).
* ``"madation"``: the evaluation code of MADation (``src/utils/utils.py``): scores
  z-normalised, ``(s - mean) / std`` (population std, in the input's float precision: float32
  stays float32, everything else float64); scikit-learn's *reduced* ROC (``roc_curve`` with its
  default ``drop_intermediate=True``) with APCER = fpr, BPCER = 1 - tpr (bona fide positive);
  ``i = nanargmin |tpr + fpr - 1|`` and EER = fpr[i]; BPCER@APCER=x = BPCER at the first ROC
  point whose APCER is nearest x; APCER@BPCER=x = APCER at the *last* point whose BPCER is
  nearest x.  Attacks are pooled (no ``attack_types``).
* ``"foundpad"``: FoundPAD's ``performances_cross_db`` on z-normalised scores: the same reduced
  ROC and index ``i``; EER = fpr[i]; APCER = fpr[i], BPCER = 1 - tpr[i], HTER their mean (all
  at ``i``; see :func:`eer_point`); AUC = trapezoids of the reduced ROC (sklearn ``auc``).
  FoundPAD defines no BPCER@APCER / APCER@BPCER: those raise ``ValueError`` with this rule.

Both upstream rules fail there (NaN, or a crash) on one class or on constant scores (std 0);
here that is a ``ValueError`` naming the cause.  The reduced ROC is computed here (no sklearn
call) and equals ``sklearn.metrics.roc_curve`` point for point (tested).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "roc",
    "eer",
    "eer_threshold",
    "tar_at_far",
    "roc_auc",
    "apcer",
    "apcer_per_type",
    "bpcer",
    "acer",
    "hter",
    "bpcer_at_apcer",
    "apcer_at_bpcer",
    "verification_accuracy",
    "verification_val",
    "RULES",
    "EerPoint",
    "eer_point",
    "rule_roc",
]

RULES: tuple[str, ...] = ("iso", "madation", "foundpad")

# Relative slack when turning a rate bound into a count bound (k / N must reach k exactly).
_REL_TOL = 1e-12


# ---------------------------------------------------------------------------------- validation


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {s.shape}")
    if s.dtype == bool or not (np.issubdtype(s.dtype, np.number)):
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{name} must be finite; {name}[{bad}] = {s[bad]}")
    return s


def _as_labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"length mismatch: {n} scores but {len(y)} labels")
    if y.dtype == bool:
        return y
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"labels must be 0/1 (1 = genuine / bona fide), got dtype {y.dtype}")
    ok = (y == 0) | (y == 1)
    if not np.all(ok):
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"labels must be 0 or 1 (1 = genuine / bona fide); labels[{bad}] = {y[bad]}")
    return y == 1


def _validate(
    scores: Any, labels: Any, *, need_pos: bool = True, need_neg: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores)
    y = _as_labels(labels, len(s))
    if len(s) == 0:
        raise ValueError("scores and labels are empty")
    n_pos = int(np.count_nonzero(y))
    if need_pos and n_pos == 0:
        raise ValueError("only one class present in labels: no genuine / bona fide (label 1) sample")
    if need_neg and n_pos == len(y):
        raise ValueError("only one class present in labels: no impostor / attack (label 0) sample")
    return s, y


def _as_types(attack_types: Any, y: np.ndarray) -> tuple[np.ndarray, list]:
    """Attack type per sample (ignored on bona fide rows); returns (array, sorted types)."""
    t = np.asarray(attack_types)
    if t.ndim != 1:
        raise ValueError(f"attack_types must be a 1-D array, got shape {t.shape}")
    if len(t) != len(y):
        raise ValueError(f"length mismatch: {len(y)} labels but {len(t)} attack_types")
    types = sorted(np.unique(t[~y]).tolist(), key=str)
    return t, types


def _check_rate(value: Any, name: str, *, allow_zero: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number in {'[0' if allow_zero else '(0'}, 1], got {value!r}"
        ) from None
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (lo_ok and v <= 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    return v


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if np.isnan(t):
        raise ValueError("threshold must not be NaN")
    return t


def _max_count(rate: float, n: int) -> int:
    """Largest integer k with k / n <= rate (with a tiny relative slack for float rates)."""
    return int(np.floor(rate * n * (1.0 + _REL_TOL)))


# ----------------------------------------------------------------------------------------- ROC


class _Roc(NamedTuple):
    thresholds: np.ndarray  # descending; thresholds[0] = +inf (reject all)
    fp: np.ndarray  # int64 false accepts (impostors with s >= t)
    tp: np.ndarray  # int64 true accepts (genuine with s >= t)
    n_pos: int
    n_neg: int
    order: np.ndarray  # the descending sort order of the scores
    ends: np.ndarray  # index (in sorted order) of the last sample of each distinct score


def _roc_counts(s: np.ndarray, y: np.ndarray) -> _Roc:
    order = np.argsort(-s)
    ss = s[order]
    ys = y[order]
    # last position of each run of equal scores
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    tp_all = np.cumsum(ys, dtype=np.int64)
    tp = np.r_[np.int64(0), tp_all[ends]]
    fp = np.r_[np.int64(0), (ends + 1) - tp[1:]]
    thr = np.r_[np.inf, ss[ends]]
    n_pos = int(tp[-1])
    return _Roc(thr, fp, tp, n_pos, len(s) - n_pos, order, ends)


def roc(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC: ``(thresholds, far, tar)`` at every distinct score, no point dropped.

    ``thresholds`` is descending and starts with ``+inf`` (nothing accepted: FAR = TAR = 0);
    then one entry per distinct score ``t`` with ``FAR(t) = #{impostor: s >= t} / N`` and
    ``TAR(t) = #{genuine: s >= t} / P``; the last point is ``(1, 1)``.  Equivalent to
    scikit-learn's ``roc_curve(labels, scores, drop_intermediate=False)``.
    """
    s, y = _validate(scores, labels)
    r = _roc_counts(s, y)
    return r.thresholds, r.fp / r.n_neg, r.tp / r.n_pos


# ------------------------------------------------------------------- upstream rules (reduced ROC)


def _check_rule(rule: Any) -> str:
    if not isinstance(rule, str) or rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
    return rule


class _RuleRoc(NamedTuple):
    thresholds: np.ndarray  # raw-score thresholds (accept s >= t); thresholds[0] = +inf
    fpr: np.ndarray  # APCER / FAR at each kept point, sklearn's float64 division
    tpr: np.ndarray  # 1 - BPCER


def _z_normalise(scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(raw float64 scores, z)`` with ``z = (s - mean) / std`` in the input's precision."""
    s0 = np.asarray(scores)
    s = _as_scores(s0)
    zs = s0 if s0.dtype == np.float32 else s
    sd = np.std(zs)
    if not sd > 0:
        raise ValueError(
            "scores are all equal (std 0): z-normalisation is undefined (the upstream "
            "code gets NaN scores there)"
        )
    z = (zs - np.mean(zs)) / sd
    return s, z


def _rule_roc(scores: Any, labels: Any) -> _RuleRoc:
    """scikit-learn's ``roc_curve(labels, z, drop_intermediate=True)`` of the z-normalised
    scores, with each threshold mapped back to the raw score scale (the smallest raw score of
    the samples it accepts: the same accepted set)."""
    s, y = _validate(scores, labels)
    _, z = _z_normalise(scores)
    order = np.argsort(-s, kind="stable")
    zs = z[order]
    ys = y[order]
    # distinct z values (z is non-decreasing in s, so the raw order is a z order too)
    ends = np.flatnonzero(np.r_[zs[1:] != zs[:-1], True])
    tp = np.cumsum(ys, dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    thr = s[order][ends]
    if len(fp) > 2:  # sklearn: drop points collinear with their neighbours
        keep = np.r_[True, (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0), True]
        tp, fp, thr = tp[keep], fp[keep], thr[keep]
    tp = np.r_[np.int64(0), tp]
    fp = np.r_[np.int64(0), fp]
    thr = np.r_[np.inf, thr]
    return _RuleRoc(thr, fp / fp[-1], tp / tp[-1])


def rule_roc(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reduced ROC of the upstream rules: ``(raw thresholds, apcer, 1 - bpcer)``.

    Points of ``sklearn.metrics.roc_curve(labels, z)`` (``z`` the z-normalised scores, default
    ``drop_intermediate=True``); each threshold is given on the raw score scale (``+inf`` first).
    """
    r = _rule_roc(scores, labels)
    return r.thresholds, r.fpr, r.tpr


def _rule_eer_index(r: _RuleRoc) -> int:
    return int(np.nanargmin(np.abs(r.tpr + r.fpr - 1.0)))


class EerPoint(NamedTuple):
    """The ROC point an upstream rule takes as its EER point, and its rates."""

    eer: float
    apcer: float
    bpcer: float
    hter: float
    auc: float
    threshold: float  # raw score scale; accept s >= threshold


def eer_point(scores: Any, labels: Any, rule: str = "foundpad") -> EerPoint:
    """FoundPAD's ``performances_cross_db`` (``rule`` ``"foundpad"`` or ``"madation"``).

    On the reduced ROC of the z-normalised scores, ``i = nanargmin |tpr + fpr - 1|``:
    ``eer = apcer = fpr[i]``, ``bpcer = 1 - tpr[i]``, ``hter = (apcer + bpcer) / 2``,
    ``auc`` = trapezoids of the reduced ROC (sklearn ``auc``), ``threshold`` = the raw score
    threshold of point ``i`` (applying it with ``s >= threshold`` gives these rates).
    """
    if _check_rule(rule) == "iso":
        raise ValueError(
            "eer_point takes rule 'madation' or 'foundpad' (for 'iso' use eer, "
            "eer_threshold and the rates at that threshold)"
        )
    r = _rule_roc(scores, labels)
    i = _rule_eer_index(r)
    frr = 1.0 - r.tpr
    return EerPoint(
        float(r.fpr[i]),
        float(r.fpr[i]),
        float(frr[i]),
        float((r.fpr[i] + frr[i]) / 2.0),
        _trapezoid_auc(r),
        float(r.thresholds[i]),
    )


def _trapezoid_auc(r: _RuleRoc) -> float:
    """sklearn ``auc(fpr, tpr)``: the trapezoidal rule over the (reduced) ROC points."""
    d = np.diff(r.fpr)
    return float(np.add.reduce(d * (r.tpr[1:] + r.tpr[:-1]) / 2.0))


def _eer_index(r: _Roc) -> tuple[int, float]:
    """First ROC index k with FRR_k <= FAR_k (k >= 1) and the interpolated EER."""
    far = r.fp / r.n_neg
    frr = 1.0 - r.tp / r.n_pos
    d = frr - far  # non-increasing, d[0] = 1, d[-1] = -1
    # d is monotone: searchsorted on -d (non-decreasing) for the first -d >= 0
    k = int(np.searchsorted(-d, 0.0, side="left"))
    if d[k] == 0.0:
        return k, float(far[k])
    a = d[k - 1] / (d[k - 1] - d[k])  # in (0, 1)
    return k, float(far[k - 1] + a * (far[k] - far[k - 1]))


def eer(scores: Any, labels: Any, rule: str = "iso") -> float:
    """Equal error rate: where FRR = 1 - TAR meets FAR on the full ROC, interpolated.

    Walking the ROC points ``(FAR_k, FRR_k)`` from the reject-all point, ``d_k = FRR_k - FAR_k``
    falls from 1 to -1.  With ``k`` the first point where ``d_k <= 0``: if ``d_k = 0`` the EER
    is ``FAR_k``; otherwise the segment between points ``k-1`` and ``k`` is cut where it meets
    the line FRR = FAR::

        a   = d_{k-1} / (d_{k-1} - d_k)
        EER = FAR_{k-1} + a * (FAR_k - FAR_{k-1})   (= FRR_{k-1} + a * (FRR_k - FRR_{k-1}))

    which is where the linearly interpolated ROC crosses TAR = 1 - FAR.  Symmetric: negating
    the scores and swapping the labels gives the same EER.

    ``rule="madation"`` / ``"foundpad"``: ``fpr[nanargmin |tpr + fpr - 1|]`` on the reduced ROC
    of the z-normalised scores (see the module docstring).
    """
    if _check_rule(rule) != "iso":
        return eer_point(scores, labels, rule).eer
    s, y = _validate(scores, labels)
    return _eer_index(_roc_counts(s, y))[1]


def eer_threshold(scores: Any, labels: Any, rule: str = "iso") -> float:
    """The score threshold at the EER (for the ``dev-eer`` / ``test-eer`` threshold sources).

    Of the two ROC points that bracket the interpolated crossing (see :func:`eer`), the one
    with the smaller ``|FRR - FAR|`` (ties: the lower threshold); its threshold is an actual
    score of the set, never ``+inf``.  Applying it to the same scores gives an HTER close to
    the EER (within one ROC step, ``1 / min(P, N)``, on untied scores).

    ``rule="madation"`` / ``"foundpad"``: the raw threshold of the upstream EER point
    (:func:`eer_point`).
    """
    if _check_rule(rule) != "iso":
        return eer_point(scores, labels, rule).threshold
    s, y = _validate(scores, labels)
    r = _roc_counts(s, y)
    k, _ = _eer_index(r)
    far = r.fp / r.n_neg
    frr = 1.0 - r.tp / r.n_pos
    if abs(frr[k - 1] - far[k - 1]) < abs(frr[k] - far[k]):
        k -= 1
    return float(r.thresholds[k]) + 0.0  # + 0.0: no -0.0


def tar_at_far(scores: Any, labels: Any, far: float) -> float:
    """Largest TAR over the ROC points with ``FAR <= far``, ``far`` in (0, 1].

    ``FAR <= far`` is tested on counts: at most ``floor(far * N)`` impostors accepted.  The
    reject-all point (TAR = 0) always qualifies, so the result is defined for every ``far``.
    """
    far = _check_rate(far, "far", allow_zero=False)
    s, y = _validate(scores, labels)
    r = _roc_counts(s, y)
    k = int(np.searchsorted(r.fp, _max_count(far, r.n_neg), side="right")) - 1
    return float(r.tp[k] / r.n_pos)


def roc_auc(scores: Any, labels: Any, rule: str = "iso") -> float:
    """Area under the full ROC with genuine / bona fide as the positive class.

    Trapezoids between consecutive ROC points, i.e. the Mann-Whitney statistic
    ``P(s_genuine > s_impostor) + 0.5 * P(s_genuine = s_impostor)``; computed on exact integer
    counts: ``sum_k (fp_k - fp_{k-1}) * (tp_k + tp_{k-1}) / (2 P N)``.

    ``rule="madation"`` / ``"foundpad"``: sklearn ``auc(fpr, tpr)`` over the reduced ROC of the
    z-normalised scores (the same area up to float rounding).
    """
    if _check_rule(rule) != "iso":
        return _trapezoid_auc(_rule_roc(scores, labels))
    s, y = _validate(scores, labels)
    r = _roc_counts(s, y)
    area2 = int(np.sum(np.diff(r.fp) * (r.tp[1:] + r.tp[:-1])))
    return float(area2 / (2.0 * r.n_pos * r.n_neg))


# ------------------------------------------------------------------ rates at a fixed threshold


def bpcer(scores: Any, labels: Any, threshold: float) -> float:
    """BPCER(t) = #{bona fide: s < t} / #{bona fide} (bona fide rejected; = FRR)."""
    t = _check_threshold(threshold)
    s, y = _validate(scores, labels, need_neg=False)
    return float(np.count_nonzero(s[y] < t) / np.count_nonzero(y))


def apcer_per_type(scores: Any, labels: Any, threshold: float, attack_types: Any = None) -> dict[str, float]:
    """APCER of each attack type: ``#{attacks of type a: s >= t} / #{attacks of type a}``.

    Keys are the distinct ``attack_types`` of the attack rows (as ``str``), sorted; without
    ``attack_types`` every attack counts as one type named ``""``.
    """
    t = _check_threshold(threshold)
    s, y = _validate(scores, labels, need_pos=False)
    att = ~y
    if attack_types is None:
        return {"": float(np.count_nonzero(s[att] >= t) / np.count_nonzero(att))}
    at, types = _as_types(attack_types, y)
    out = {}
    for a in types:
        m = att & (at == a)
        out[str(a)] = float(np.count_nonzero(s[m] >= t) / np.count_nonzero(m))
    return out


def apcer(scores: Any, labels: Any, threshold: float, attack_types: Any = None, mode: str = "max") -> float:
    """APCER at threshold ``t``.

    ``mode="max"`` (ISO/IEC 30107-3): ``max_a #{attacks of type a: s >= t} / #{attacks of a}``.
    ``mode="pooled"``: ``#{attacks: s >= t} / #{attacks}`` (every type together, as many
    anti-spoofing codes report).  Without ``attack_types`` both are the pooled rate.
    """
    if mode not in ("max", "pooled"):
        raise ValueError(f"mode must be 'max' or 'pooled', got {mode!r}")
    if mode == "pooled" or attack_types is None:
        t = _check_threshold(threshold)
        s, y = _validate(scores, labels, need_pos=False)
        if attack_types is not None:
            _as_types(attack_types, y)
        return float(np.count_nonzero(s[~y] >= t) / np.count_nonzero(~y))
    return max(apcer_per_type(scores, labels, threshold, attack_types).values())


def acer(scores: Any, labels: Any, threshold: float, attack_types: Any = None) -> float:
    """ACER(t) = (APCER(t) + BPCER(t)) / 2 with APCER the maximum over attack types (OULU-NPU)."""
    s, y = _validate(scores, labels)
    return float((apcer(s, y, threshold, attack_types, "max") + bpcer(s, y, threshold)) / 2.0)


def hter(scores: Any, labels: Any, threshold: float) -> float:
    """HTER(t) = (FAR(t) + FRR(t)) / 2 = (APCER_pooled(t) + BPCER(t)) / 2 at a stated threshold."""
    t = _check_threshold(threshold)
    s, y = _validate(scores, labels)
    far = np.count_nonzero(s[~y] >= t) / np.count_nonzero(~y)
    frr = np.count_nonzero(s[y] < t) / np.count_nonzero(y)
    return float((far + frr) / 2.0)


# ---------------------------------------------------------------- operating points (APCER/BPCER)


def _apcer_counts(r: _Roc, y: np.ndarray, attack_types: Any) -> list[tuple[np.ndarray, int]]:
    """Per attack type: (accepted attacks of that type at each ROC point, type size)."""
    if attack_types is None:
        return [(r.fp, r.n_neg)]
    at, types = _as_types(attack_types, y)
    at_sorted = at[r.order]
    att_sorted = ~y[r.order]
    out = []
    for a in types:
        m = att_sorted & (at_sorted == a)
        c = np.cumsum(m, dtype=np.int64)
        out.append((np.r_[np.int64(0), c[r.ends]], int(c[-1])))
    return out


def _rule_op(rule: str, attack_types: Any, name: str) -> None:
    if rule == "foundpad":
        raise ValueError(
            f"rule 'foundpad' defines no {name} (FoundPAD reports EER, HTER, APCER, "
            "BPCER and AUC); use rule 'iso' or 'madation'"
        )
    if attack_types is not None:
        raise ValueError(f"rule {rule!r} pools every attack: attack_types only applies to rule 'iso'")


def bpcer_at_apcer(
    scores: Any, labels: Any, apcer: float, attack_types: Any = None, rule: str = "iso"
) -> float:
    """Lowest BPCER over the thresholds whose APCER <= ``apcer`` (in [0, 1]).

    APCER is the maximum over ``attack_types`` when given (ISO/IEC 30107-3), else pooled;
    ``APCER <= x`` means at most ``floor(x * N_a)`` attacks of each type ``a`` accepted.  Both
    rates are monotone in the threshold, so the answer is the BPCER at the lowest threshold
    that satisfies the bound (the reject-all threshold always does: BPCER = 1 there).

    ``rule="madation"``: ``1 - tpr[argmin |fpr - x|]`` on the reduced ROC of the z-normalised
    scores (the nearest point, first among ties; it may lie above ``x``).
    """
    x = _check_rate(apcer, "apcer", allow_zero=True)
    if _check_rule(rule) != "iso":
        _rule_op(rule, attack_types, "BPCER@APCER")
        rr = _rule_roc(scores, labels)
        return float((1.0 - rr.tpr)[int(np.argmin(np.abs(rr.fpr - x)))])
    s, y = _validate(scores, labels)
    r = _roc_counts(s, y)
    k = len(r.thresholds) - 1
    for acc, n_a in _apcer_counts(r, y, attack_types):
        k = min(k, int(np.searchsorted(acc, _max_count(x, n_a), side="right")) - 1)
    return float(1.0 - r.tp[k] / r.n_pos)


def apcer_at_bpcer(
    scores: Any, labels: Any, bpcer: float, attack_types: Any = None, rule: str = "iso"
) -> float:
    """Lowest APCER over the thresholds whose BPCER <= ``bpcer`` (in [0, 1]).

    ``BPCER <= x`` means at most ``floor(x * P)`` bona fide rejected; APCER is the maximum over
    ``attack_types`` when given, else pooled.  The answer is the APCER at the highest threshold
    that satisfies the bound (the lowest score always does: BPCER = 0 there).

    ``rule="madation"``: ``fpr[i]`` with ``i`` the *last* reduced-ROC point whose BPCER
    ``1 - tpr`` is nearest ``x`` (z-normalised scores).
    """
    x = _check_rate(bpcer, "bpcer", allow_zero=True)
    if _check_rule(rule) != "iso":
        _rule_op(rule, attack_types, "APCER@BPCER")
        rr = _rule_roc(scores, labels)
        gap = np.abs((1.0 - rr.tpr) - x)
        return float(rr.fpr[int(np.flatnonzero(gap == gap.min())[-1])])
    s, y = _validate(scores, labels)
    r = _roc_counts(s, y)
    need_tp = r.n_pos - _max_count(x, r.n_pos)
    k = int(np.searchsorted(r.tp, need_tp, side="left"))
    return float(max(acc[k] / n_a for acc, n_a in _apcer_counts(r, y, attack_types)))


# ------------------------------------------------------------------------- face verification


def _pair_distances(
    emb1: Any, emb2: Any, issame: Any, n_folds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(squared distances of the unit vectors, issame bools, fold bounds)``."""
    a = np.asarray(emb1)
    b = np.asarray(emb2)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"emb1 and emb2 must be 2-D (pairs x dim), got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: emb1 {a.shape} vs emb2 {b.shape}")
    same = np.asarray(issame)
    if same.ndim != 1 or len(same) != len(a):
        raise ValueError(f"length mismatch: {len(a)} pairs but issame has shape {same.shape}")
    if same.dtype != bool:
        if not np.issubdtype(same.dtype, np.number) or not np.all((same == 0) | (same == 1)):
            raise ValueError("issame must hold booleans or 0/1")
        same = same == 1
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    n = len(a)
    if n < n_folds:
        raise ValueError(f"{n} pairs cannot fill n_folds = {n_folds} folds")
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("embeddings must be finite")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        i = int(np.flatnonzero((na == 0) | (nb == 0))[0])
        raise ValueError(f"pair {i} has a zero-norm embedding (cannot L2-normalise)")
    dist = np.sum((a / na[:, None] - b / nb[:, None]) ** 2, axis=1)

    bounds = np.cumsum([0] + [len(f) for f in np.array_split(np.arange(n), n_folds)])
    return dist, same, bounds


def verification_accuracy(emb1: Any, emb2: Any, issame: Any, n_folds: int = 10) -> tuple[float, float]:
    """InsightFace k-fold verification accuracy: ``(mean, population std)`` over the folds.

    1. ``e = x / ||x||`` for every row of ``emb1`` and ``emb2``; ``dist = ||e1 - e2||^2`` in [0, 4].
    2. Folds: ``n_folds`` contiguous blocks in input order (the first ``n % n_folds`` one pair
       longer), as scikit-learn's unshuffled ``KFold``.
    3. Thresholds ``numpy.arange(0, 4, 0.01)`` (0.00 .. 3.99); a pair is "same" iff
       ``dist < threshold``.
    4. For each fold, the first threshold with the best accuracy on the other folds scores the
       held-out fold (the held-out fold never sees its own threshold).
    5. Mean and ``std(ddof=0)`` of the fold accuracies.

    The flip fusion (``f(x) + f(flip x)``) happens before, in the features.
    """
    dist, same, bounds = _pair_distances(emb1, emb2, issame, n_folds)
    thresholds = np.arange(0, 4, 0.01)

    def correct_counts(d: np.ndarray, sm: np.ndarray) -> np.ndarray:
        """Correct decisions at every threshold: same with d < t, plus different with d >= t."""
        ds = np.sort(d[sm])
        dd = np.sort(d[~sm])
        same_below = np.searchsorted(ds, thresholds, side="left")
        diff_below = np.searchsorted(dd, thresholds, side="left")
        return same_below + (len(dd) - diff_below)

    total = correct_counts(dist, same)
    accs = np.empty(n_folds)
    for f in range(n_folds):
        lo, hi = bounds[f], bounds[f + 1]
        fold = correct_counts(dist[lo:hi], same[lo:hi])
        best = int(np.argmax(total - fold))  # first threshold with the best train accuracy
        accs[f] = fold[best] / (hi - lo)
    return float(np.mean(accs)), float(np.std(accs))


def _interp_slinear(x: np.ndarray, y: np.ndarray, x0: float) -> float:
    """``scipy.interpolate.interp1d(x, y, kind="slinear")(x0)`` for non-decreasing ``x`` with
    ``x[0] <= x0 <= x[-1]``: the order-1 B-spline through the points (repeated ``x`` values
    allowed, as scipy <= 1.8 accepted them; later versions refuse repeated ``x``), evaluated as
    scipy's de Boor recursion does: at a repeated ``x`` value, the ``y`` of its last copy;
    at ``x0 = x[-1]`` with ``x[-1]`` repeated, 0 (``dist < 0`` then accepts nothing, as the
    NaN of older scipy versions did)."""
    n = len(x)
    # knots t = [x0, x0, x1, ..., x_{n-1}, x_{n-1}]; interval m: t[m] <= x0 < t[m+1], m in [1, n-1]
    t = np.r_[x[0], x, x[-1]]
    m = min(int(np.searchsorted(t, x0, side="right")) - 1, n - 1)
    xa, xb = t[m], t[m + 1]
    if xa == xb:  # x0 = x[-1] with x[-1] repeated: a zero-length interval, where the spline is 0
        return 0.0
    w = 1.0 / (xb - xa)
    return float(y[m - 1] * (w * (xb - x0)) + y[m] * (w * (x0 - xa)))


def verification_val(
    emb1: Any, emb2: Any, issame: Any, far: float = 1e-3, n_folds: int = 10
) -> tuple[float, float, float]:
    """InsightFace's VAL at a target FAR (``calculate_val``): ``(val mean, val std, far mean)``.

    Distances and folds as :func:`verification_accuracy`.  For each fold, on the other folds:
    ``FAR(t) = #{different pairs: dist < t} / #{different pairs}`` at every ``t`` of
    ``numpy.arange(0, 4, 0.001)``; if ``max FAR >= far`` the threshold is the piecewise-linear
    interpolation of ``t`` over ``FAR`` at ``far`` (scipy ``interp1d(..., kind="slinear")``),
    else 0.  On the held-out fold, with that threshold: ``VAL = #{same: dist < t} / #{same}``
    and its FAR likewise.  Returns the mean and population std of VAL and the mean FAR over
    the folds.  Every fold and its complement need both kinds of pair (InsightFace divides by
    zero there); otherwise ``ValueError``.
    """
    target = _check_rate(far, "far", allow_zero=False)
    dist, same, bounds = _pair_distances(emb1, emb2, issame, n_folds)
    thresholds = np.arange(0, 4, 0.001)
    vals = np.empty(n_folds)
    fars = np.empty(n_folds)
    for f in range(n_folds):
        lo, hi = bounds[f], bounds[f + 1]
        test = np.zeros(len(dist), dtype=bool)
        test[lo:hi] = True
        tr_diff = np.sort(dist[~test & ~same])
        te_same = dist[test & same]
        te_diff = dist[test & ~same]
        if len(tr_diff) == 0 or len(te_same) == 0 or len(te_diff) == 0:
            raise ValueError(
                f"fold {f} of {n_folds}: VAL needs genuine and impostor pairs in every "
                "fold and impostor pairs outside it"
            )
        far_train = np.searchsorted(tr_diff, thresholds, side="left") / len(tr_diff)
        thr = _interp_slinear(far_train, thresholds, target) if far_train.max() >= target else 0.0
        vals[f] = np.count_nonzero(te_same < thr) / len(te_same)
        fars[f] = np.count_nonzero(te_diff < thr) / len(te_diff)
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))
