"""The ``pad`` and ``mad`` protocols: bona fide scores in, attack-detection error rates out.

Pure functions on arrays: no model, no file.  Conventions of :mod:`harness.metrics`: label 1 =
bona fide, 0 = attack; higher score = more bona fide; a threshold accepts ``score >= t``.

Metric names (every value a fraction in [0, 1])::

    eer, auc                                   threshold-free, full ROC
    hter, apcer, apcer_pooled, bpcer, acer     at the stated threshold (see below)
    bpcer@apcer=0.01, =0.05, =0.1, =0.2        lowest BPCER with APCER <= x (APCER: max over types)
    apcer@bpcer=0.01, =0.05, =0.1, =0.2        lowest APCER with BPCER <= x
    apcer[<type>]                              PAD only, per attack type, when types are given

``apcer`` is the maximum over attack types (ISO/IEC 30107-3), ``apcer_pooled`` every attack
together; ``acer = (apcer + bpcer) / 2``; ``hter = (apcer_pooled + bpcer) / 2``.

Threshold source (``threshold=``), always returned in ``details`` next to the value used:

* ``"test-eer"``: the EER threshold of the evaluated scores themselves (cross-dataset
  O/C/I/M convention; HTER then sits at about the EER);
* ``"dev-eer"``: the EER threshold of a development set (``dev_scores``/``dev_labels``)
  applied to the test scores (the classic intra-dataset protocol);
* a number: that threshold.

PAD (:func:`evaluate_pad`): every attack against every bona fide sample, after averaging the
frame scores of each video (``video_average``).  MAD (:func:`evaluate_mad`): bona fide against
each morphing method separately (``eer[<method>]`` ...), and every metric averaged over the
methods under its plain name (``eer`` ...), as the MAD literature reports.

Metric rule (``metric_rule=``, recorded in ``details["metric_rule"]``), see
:mod:`harness.metrics`:

* ``"iso"`` (default): everything above.
* ``"madation"``: MADation's evaluation code: z-normalised scores, scikit-learn's reduced ROC,
  ``eer``/``auc``/``bpcer@apcer=x``/``apcer@bpcer=x`` as its ``evaluate_mad_performance``
  (nearest ROC point); attacks pooled (``apcer`` = ``apcer_pooled``).
* ``"foundpad"``: FoundPAD's ``performances_cross_db``: frame scores averaged per video with
  ``numpy.mean`` in the input's precision (``compute_video_score``), z-normalised, reduced ROC;
  ``eer``, ``auc``, and -- with ``threshold = "test-eer"`` -- ``apcer``, ``bpcer``, ``hter``
  (and ``apcer_pooled``, ``acer``) at FoundPAD's EER index.  FoundPAD defines no operating
  points: ``bpcer@apcer=x`` / ``apcer@bpcer=x`` stay ISO (``details["operating_point_rule"]``).

Under both upstream rules ``"test-eer"`` is the upstream EER point (:func:`harness.metrics.eer_point`)
and ``"dev-eer"`` that point's threshold on the development set; a threshold that is not the
test set's own EER point gives the harness's rates at it (accept ``score >= t``, APCER pooled).

Scoring helpers for models without a task head: :func:`text_scores` (CLIP text prompts) and
:func:`probe_scores` (a logistic-regression probe trained on the benchmark's train split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness import metrics as M
from harness.errors import DataError
from harness.protocols import ProtocolResult

__all__ = [
    "OPERATING_POINTS",
    "AttackResult",
    "ProtocolResult",
    "attack_metrics",
    "average_per_video",
    "resolve_threshold",
    "evaluate_pad",
    "evaluate_mad",
    "evaluate",
    "text_scores",
    "probe_scores",
]

OPERATING_POINTS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
THRESHOLD_SOURCES = ("test-eer", "dev-eer")
METRIC_RULES = M.RULES


# ``metrics``: ``{name: float in [0, 1]}``; ``details``: threshold used, its source, counts.
AttackResult = ProtocolResult


def _rate_key(x: float) -> str:
    return f"{float(x):g}"


# ------------------------------------------------------------------------------- video average


def average_per_video(
    scores: Any, labels: Any, video_ids: Any, attack_types: Any = None, *, upstream_mean: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Mean frame score per video id -> ``(scores, labels, attack_types, video_ids)``.

    Samples with an empty (``""``) or ``None`` video id stay on their own.  Every frame of a
    video must have the same label (and, for attacks, the same attack type), else
    :class:`DataError` naming the video.  Videos come out sorted by id, lone samples last.
    ``upstream_mean``: each video's mean is ``numpy.mean`` of its frame scores in input order
    and in the input's precision (float32 stays float32), as FoundPAD's ``compute_video_score``.
    """
    s = M._as_scores(scores)
    y = M._as_labels(labels, len(s))
    v = np.asarray(video_ids, dtype=object)
    if v.ndim != 1 or len(v) != len(s):
        raise ValueError(f"length mismatch: {len(s)} scores but video_ids has shape {v.shape}")
    if attack_types is not None:
        at = np.asarray(attack_types)
        if at.ndim != 1 or len(at) != len(s):
            raise ValueError(f"length mismatch: {len(s)} scores but attack_types has shape {at.shape}")
    lone = np.array([x is None or str(x) == "" for x in v], dtype=bool)
    keyed = np.flatnonzero(~lone)
    uniq, inv = np.unique(v[keyed].astype(str), return_inverse=True)
    group = np.empty(len(s), dtype=np.int64)
    group[keyed] = inv
    group[lone] = len(uniq) + np.arange(int(lone.sum()))
    n_groups = len(uniq) + int(lone.sum())
    ids = np.concatenate([uniq.astype(object), v[lone].astype(object)])

    count = np.bincount(group, minlength=n_groups)
    pos = np.bincount(group, weights=y.astype(np.float64), minlength=n_groups)
    mixed = (pos != 0) & (pos != count)
    if np.any(mixed):
        g = int(np.flatnonzero(mixed)[0])
        raise DataError(
            f"video {ids[g]!r} mixes bona fide and attack frames; labels must agree within a video"
        )
    if upstream_mean:
        s0 = np.asarray(scores)
        s0 = s0 if s0.dtype == np.float32 else s
        by_group = np.argsort(group, kind="stable")
        starts = np.r_[0, np.cumsum(count)]
        out_s = np.array(
            [np.mean(s0[by_group[starts[g] : starts[g + 1]]]) for g in range(n_groups)], dtype=s0.dtype
        )
    else:
        out_s = np.bincount(group, weights=s, minlength=n_groups) / count
    out_y = (pos == count).astype(np.int64)
    out_t = None
    if attack_types is not None:
        at = np.asarray(attack_types)
        out_t = np.empty(n_groups, dtype=at.dtype)
        out_t[group] = at  # one representative per video
        attack = ~y
        bad = attack & (at != out_t[group])
        if np.any(bad):
            g = int(group[np.flatnonzero(bad)[0]])
            raise DataError(f"video {ids[g]!r} mixes attack types; attack_type must agree within a video")
    return out_s, out_y, out_t, ids


# ---------------------------------------------------------------------------------- thresholds


def resolve_threshold(
    threshold: Any,
    scores: Any,
    labels: Any,
    dev_scores: Any = None,
    dev_labels: Any = None,
    rule: str = "iso",
) -> tuple[float, str]:
    """``(threshold value, source)`` for ``"test-eer"``, ``"dev-eer"`` or a number (EER
    thresholds by the metric ``rule``)."""
    if isinstance(threshold, str):
        if threshold == "test-eer":
            return M.eer_threshold(scores, labels, rule=rule), "test-eer"
        if threshold == "dev-eer":
            if dev_scores is None or dev_labels is None:
                raise ValueError("threshold = 'dev-eer' needs dev_scores and dev_labels")
            return M.eer_threshold(dev_scores, dev_labels, rule=rule), "dev-eer"
        raise ValueError(f"threshold must be 'test-eer', 'dev-eer' or a number, got {threshold!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be 'test-eer', 'dev-eer' or a number, got {threshold!r}")
    t = float(threshold)
    if np.isnan(t):
        raise ValueError("threshold must not be NaN")
    return t, "fixed"


# ------------------------------------------------------------------------------------ metrics


def _rule_metrics(
    scores: Any,
    labels: Any,
    threshold: float | None,
    attack_types: Any,
    operating_points: Sequence[float],
    per_type: bool,
    rule: str,
) -> dict[str, float]:
    """The metrics under an upstream rule; ``threshold=None``: the rule's own EER point."""
    s, y = M._validate(scores, labels)
    pt = M.eer_point(scores, labels, rule)
    out = {"eer": pt.eer, "auc": pt.auc}
    if threshold is None:
        t = pt.threshold
        ap, bp, ht = pt.apcer, pt.bpcer, pt.hter
    else:
        t = float(threshold)
        ap = M.apcer(s, y, t, None, "pooled")
        bp = M.bpcer(s, y, t)
        ht = (ap + bp) / 2.0
    out.update({"hter": ht, "apcer": ap, "apcer_pooled": ap, "bpcer": bp, "acer": (ap + bp) / 2.0})
    op_rule, op_types = (rule, None) if rule == "madation" else ("iso", attack_types)
    for x in operating_points:
        out[f"bpcer@apcer={_rate_key(x)}"] = M.bpcer_at_apcer(scores, labels, x, op_types, rule=op_rule)
    for x in operating_points:
        out[f"apcer@bpcer={_rate_key(x)}"] = M.apcer_at_bpcer(scores, labels, x, op_types, rule=op_rule)
    if per_type and attack_types is not None:
        for a, v in M.apcer_per_type(s, y, t, attack_types).items():
            out[f"apcer[{a}]"] = v
    return {k: float(v) for k, v in out.items()}


def _check_metric_rule(rule: Any) -> str:
    if not isinstance(rule, str) or rule not in METRIC_RULES:
        raise ValueError(f"metric_rule must be one of {', '.join(map(repr, METRIC_RULES))}, got {rule!r}")
    return rule


def _rule_details(rule: str) -> dict[str, Any]:
    d: dict[str, Any] = {"metric_rule": rule}
    if rule == "foundpad":
        d["operating_point_rule"] = "iso"
    return d


def attack_metrics(
    scores: Any,
    labels: Any,
    threshold: float | None,
    attack_types: Any = None,
    *,
    operating_points: Sequence[float] = OPERATING_POINTS,
    per_type: bool = False,
    rule: str = "iso",
) -> dict[str, float]:
    """Every attack-detection metric at a numeric ``threshold`` (see the module docstring).

    ``rule`` ``"madation"`` / ``"foundpad"``: the upstream rule; ``threshold=None`` then
    means the rule's own EER point (the rates at it exactly as the upstream code reports them).
    """
    if _check_metric_rule(rule) != "iso":
        return _rule_metrics(scores, labels, threshold, attack_types, operating_points, per_type, rule)
    if threshold is None:
        raise ValueError("threshold must be a number with rule 'iso'")
    s, y = M._validate(scores, labels)
    t = float(threshold)
    ap_max = M.apcer(s, y, t, attack_types, "max")
    ap_pool = M.apcer(s, y, t, attack_types, "pooled")
    bp = M.bpcer(s, y, t)
    out = {
        "eer": M.eer(s, y),
        "auc": M.roc_auc(s, y),
        "hter": (ap_pool + bp) / 2.0,
        "apcer": ap_max,
        "apcer_pooled": ap_pool,
        "bpcer": bp,
        "acer": (ap_max + bp) / 2.0,
    }
    for x in operating_points:
        out[f"bpcer@apcer={_rate_key(x)}"] = M.bpcer_at_apcer(s, y, x, attack_types)
    for x in operating_points:
        out[f"apcer@bpcer={_rate_key(x)}"] = M.apcer_at_bpcer(s, y, x, attack_types)
    if per_type and attack_types is not None:
        for a, v in M.apcer_per_type(s, y, t, attack_types).items():
            out[f"apcer[{a}]"] = v
    return {k: float(v) for k, v in out.items()}


def _prepare(scores, labels, attack_types, video_ids, video_average, rule="iso"):
    s = M._as_scores(scores)
    y = M._as_labels(labels, len(s)).astype(np.int64)
    n_samples = len(s)
    if attack_types is not None:
        attack_types = np.asarray(attack_types)
    if rule != "iso":
        s0 = np.asarray(scores)
        if s0.dtype == np.float32:
            s = s0  # upstream precision: the rule z-normalises float32 scores in float32
    if video_average and video_ids is not None:
        s, y, attack_types, _ = average_per_video(
            s, y, video_ids, attack_types, upstream_mean=rule == "foundpad"
        )
    elif video_ids is not None and len(np.asarray(video_ids, dtype=object)) != n_samples:
        raise ValueError(f"length mismatch: {n_samples} scores but {len(video_ids)} video_ids")
    return s, y, attack_types, n_samples


def _dev(dev_scores, dev_labels, dev_video_ids, video_average, rule="iso"):
    if dev_scores is None or dev_labels is None:
        return dev_scores, dev_labels
    if video_average and dev_video_ids is not None:
        ds, dy, _, _ = average_per_video(
            dev_scores, dev_labels, dev_video_ids, upstream_mean=rule == "foundpad"
        )
        return ds, dy
    return dev_scores, dev_labels


def evaluate_pad(
    scores: Any,
    labels: Any,
    attack_types: Any = None,
    video_ids: Any = None,
    *,
    threshold: str | float = "test-eer",
    dev_scores: Any = None,
    dev_labels: Any = None,
    dev_video_ids: Any = None,
    video_average: bool = True,
    operating_points: Sequence[float] = OPERATING_POINTS,
    per_type: bool = True,
    metric_rule: str = "iso",
) -> AttackResult:
    """PAD protocol: all attacks against all bona fide samples.

    With ``video_ids`` and ``video_average`` the frame scores of each video are averaged first
    (the development set's likewise, with ``dev_video_ids``).  ``threshold``: ``"test-eer"``,
    ``"dev-eer"`` (needs ``dev_scores`` and ``dev_labels``) or a number.  ``per_type`` adds
    ``apcer[<type>]`` for each attack type.  ``metric_rule``: ``"iso"``, ``"madation"`` or
    ``"foundpad"`` (module docstring).  Returns ``AttackResult(metrics, details)`` with
    ``details = {"threshold", "threshold_source", "metric_rule", "n_samples", "n_scored",
    "n_bona_fide", "n_attack"}`` (``n_scored``: after video averaging; the threshold on the raw
    score scale).
    """
    rule = _check_metric_rule(metric_rule)
    s, y, at, n_samples = _prepare(scores, labels, attack_types, video_ids, video_average, rule)
    M._validate(s, y)
    ds, dy = _dev(dev_scores, dev_labels, dev_video_ids, video_average, rule)
    t, source = resolve_threshold(threshold, s, y, ds, dy, rule)
    own_point = rule != "iso" and source == "test-eer"
    metrics = attack_metrics(
        s, y, None if own_point else t, at, operating_points=operating_points, per_type=per_type, rule=rule
    )
    details = {
        "threshold": t,
        "threshold_source": source,
        **_rule_details(rule),
        "n_samples": n_samples,
        "n_scored": int(len(s)),
        "n_bona_fide": int(y.sum()),
        "n_attack": int(len(y) - y.sum()),
    }
    return AttackResult(metrics, details)


def evaluate_mad(
    scores: Any,
    labels: Any,
    attack_types: Any,
    video_ids: Any = None,
    *,
    threshold: str | float = "test-eer",
    dev_scores: Any = None,
    dev_labels: Any = None,
    dev_video_ids: Any = None,
    video_average: bool = True,
    operating_points: Sequence[float] = OPERATING_POINTS,
    metric_rule: str = "iso",
) -> AttackResult:
    """MAD protocol: bona fide against each morphing method, then the average over methods.

    ``attack_types`` names each attack's morphing method (required).  For each method ``m``
    the metrics of (all bona fide + the attacks of ``m``) are reported as ``<metric>[m]``, and
    their unweighted mean over methods as ``<metric>``.  Keys: ``eer auc hter apcer bpcer acer
    bpcer@apcer=x apcer@bpcer=x`` (one method per subset, so APCER needs no pooled variant).
    Threshold: ``"test-eer"`` takes each method's own EER threshold; ``"dev-eer"`` takes the
    EER threshold of the whole development set, the same for every method; a number is used as
    is.  ``details["thresholds"]`` holds the threshold per method.  ``metric_rule``: as
    :func:`evaluate_pad`; under an upstream rule each method's subset (all bona fide + that
    method's attacks, as MADation's per-method test lists) is z-normalised on its own.
    """
    if attack_types is None:
        raise ValueError("MAD needs attack_types: the morphing method of each attack sample")
    rule = _check_metric_rule(metric_rule)
    s, y, at, n_samples = _prepare(scores, labels, attack_types, video_ids, video_average, rule)
    _, yb = M._validate(s, y)
    _, methods = M._as_types(at, yb)
    fixed: float | None = None
    source = "test-eer"
    if not (isinstance(threshold, str) and threshold == "test-eer"):
        ds, dy = _dev(dev_scores, dev_labels, dev_video_ids, video_average, rule)
        fixed, source = resolve_threshold(threshold, s, y, ds, dy, rule)
    per_method: dict[str, dict[str, float]] = {}
    thresholds: dict[str, float] = {}
    for m in methods:
        mask = yb | (at == m)
        sm, ym = s[mask], y[mask]
        t = M.eer_threshold(sm, ym, rule=rule) if fixed is None else fixed
        thresholds[str(m)] = float(t)
        own_point = rule != "iso" and fixed is None
        met = attack_metrics(
            sm, ym, None if own_point else t, None, operating_points=operating_points, rule=rule
        )
        met.pop("apcer_pooled")
        per_method[str(m)] = met
    names = list(next(iter(per_method.values())))
    metrics: dict[str, float] = {}
    for k in names:
        metrics[k] = float(np.mean([per_method[m][k] for m in per_method]))
    for m, met in per_method.items():
        for k in names:
            metrics[f"{k}[{m}]"] = met[k]
    details = {
        "threshold": fixed,
        "threshold_source": source,
        **_rule_details(rule),
        "thresholds": thresholds,
        "methods": list(per_method),
        "n_samples": n_samples,
        "n_scored": int(len(s)),
        "n_bona_fide": int(yb.sum()),
        "n_attack": int(len(yb) - yb.sum()),
    }
    return AttackResult(metrics, details)


def evaluate(
    protocol: str, scores: Any, labels: Any, attack_types: Any = None, video_ids: Any = None, **kw: Any
) -> AttackResult:
    """Dispatch on the protocol name: ``"pad"`` -> :func:`evaluate_pad`, ``"mad"`` ->
    :func:`evaluate_mad`."""
    if protocol == "pad":
        return evaluate_pad(scores, labels, attack_types, video_ids, **kw)
    if protocol == "mad":
        return evaluate_mad(scores, labels, attack_types, video_ids, **kw)
    raise ValueError(f"protocol must be 'pad' or 'mad', got {protocol!r}")


# ------------------------------------------------------------------------------------ scoring


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ValueError(f"{name} has a zero-norm row (cannot L2-normalise)")
    return x / n


def _class_embedding(emb: Any, name: str, dim: int) -> np.ndarray:
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim == 1:
        e = e[None, :]
    if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] != dim:
        raise ValueError(f"{name} must be (n_prompts, {dim}) or ({dim},), got shape {np.shape(emb)}")
    return _unit_rows(_unit_rows(e, name).mean(axis=0), name)


def text_scores(
    image_features: Any, bona_fide_text_emb: Any, attack_text_emb: Any, *, logit: bool = False
) -> np.ndarray:
    """Zero-shot P(bona fide) from CLIP text prompts.

    Each class embedding = normalise(mean(normalise(prompt embeddings))) (CLIP's zero-shot
    classifier); ``c_b``, ``c_a`` = cosine similarity of the normalised image feature to the
    bona fide and the attack class; score = softmax(100 * [c_b, c_a])[0]
    = 1 / (1 + exp(-100 (c_b - c_a))).  ``logit=True`` returns ``100 (c_b - c_a)`` instead:
    the same ranking (same EER, AUC, ...) without saturating at 0 or 1.
    """
    x = np.asarray(image_features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"image_features must be 2-D (samples x dim), got shape {x.shape}")
    b = _class_embedding(bona_fide_text_emb, "bona_fide_text_emb", x.shape[1])
    a = _class_embedding(attack_text_emb, "attack_text_emb", x.shape[1])
    x = _unit_rows(x, "image_features")
    z = 100.0 * (x @ b - x @ a)
    if logit:
        return z
    e = np.exp(-np.abs(z))  # the logistic function, overflow-free
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def probe_scores(
    train_x: Any, train_y: Any, test_x: Any, *, seed: int = 0, C: float = 1.0, max_iter: int = 1000
) -> np.ndarray:
    """P(bona fide) from a logistic-regression probe trained on the benchmark's train split.

    Features are standardised with the train split's mean and std (scikit-learn
    ``StandardScaler``), then ``LogisticRegression(C=C, max_iter=max_iter, random_state=seed)``
    (L-BFGS, L2) is fitted on ``train_y`` (1 = bona fide); returns ``predict_proba`` of class 1
    on ``test_x``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr = np.asarray(train_x, dtype=np.float64)
    xte = np.asarray(test_x, dtype=np.float64)
    if xtr.ndim != 2 or xte.ndim != 2:
        raise ValueError(f"train_x and test_x must be 2-D, got shapes {xtr.shape} and {xte.shape}")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"feature size mismatch: train_x has {xtr.shape[1]}, test_x {xte.shape[1]}")
    ytr = M._as_labels(train_y, len(xtr))
    if ytr.all() or not ytr.any():
        raise ValueError(
            "only one class present in train_y: the probe needs bona fide (1) and attack (0) samples"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    model.fit(xtr, ytr.astype(np.int64))
    col = list(model.classes_).index(1)
    return model.predict_proba(xte)[:, col]
