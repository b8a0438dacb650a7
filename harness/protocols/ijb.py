"""IJB-B / IJB-C 1:1 template verification: TAR at FAR = 1e-6 .. 1e-1.

Pipeline (InsightFace ``eval_ijbc.py`` convention, on features the caller extracted; with the
``flip`` option the caller passes ``f(x) + f(flip x)`` per image):

1. image feature ``x_i``; with ``image_norm="unit"`` it is first scaled to unit length
   (``"keep"``, the default, keeps its norm);
2. with ``detector_score_weight`` it is multiplied by the detector score ``q_i``;
3. media vector = mean of the image features of one media id within one template;
4. template vector = sum of its media vectors, then L2-normalised;
5. pair score = cosine of the two template vectors (their dot product).

Steps 1-4 are one sparse matrix product ``A @ X`` with
``A[t, i] = q_i / (|x_i| n_m(i))`` (``n_m(i)``: images of ``i``'s media in its template), so the
image features are never copied.  Step 5 runs in blocks of at most ``chunk`` pairs: pairs are
grouped by their first template and each group is one matrix-vector product (memory
``chunk * D * 4`` bytes), or, when the groups are small, both sides are gathered per block.

TAR@FAR from one descending sort of the scores (a pair is accepted when its score is ``>=`` the
threshold; one ROC point per distinct score, plus the reject-all point):

* ``far_rule="at-most"``: the largest TAR among the points with at most ``floor(far * N)``
  false accepts (``N`` impostor pairs), i.e. FAR <= target, as :func:`harness.metrics.tar_at_far`;
* ``far_rule="insightface"``: InsightFace's reading, the ROC point whose FAR is *nearest* the
  target (it may lie above it): on scikit-learn's default ``roc_curve`` (``drop_intermediate=True``,
  which removes the inner points of straight runs of equal steps) the point minimising
  ``|FAR - far|``, ties going to the later point (higher FAR / TAR), as ``np.flipud`` then
  ``min`` does in ``eval_ijbc.py``.

``details`` reports, per target, the achieved FAR, the false and true accept counts and the
threshold, so a TAR read off a FAR above the target (or off zero false accepts where
``far * N < 1``) is visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.protocols import ProtocolResult

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
FAR_RULES = ("at-most", "insightface")
IMAGE_NORMS = ("keep", "unit")
DEFAULT_CHUNK = 1 << 14
_REL_TOL = 1e-12  # as harness.metrics: k / N <= far reaches k exactly
_MIN_GROUP = 32  # mean pairs per first template below which blocks gather both sides


def far_key(far: float) -> str:
    """``1e-4 -> "tar@far=1e-4"``, ``5e-3 -> "tar@far=5e-3"``, ``0.25 -> "tar@far=2.5e-1"``."""
    mantissa, exponent = f"{float(far):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"tar@far={mantissa}e{int(exponent)}"


# ------------------------------------------------------------------------- template features


def template_features(
    image_features: Any,
    template_id: Any,
    media_id: Any,
    faceness: Any = None,
    *,
    detector_score_weight: bool = True,
    image_norm: str = "keep",
) -> tuple[np.ndarray, np.ndarray]:
    """``(templates [T], features [T, D] float32)``: sorted template ids and unit template vectors.

    See the module docstring for the steps.  A template whose vector is zero (e.g. every
    detector score 0) stays zero and scores 0 against everything.
    """
    from scipy import sparse

    x = np.asarray(image_features)
    if x.ndim != 2:
        raise ValueError(f"image_features must be 2-D (images x dim), got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    m = len(x)
    tid = _ids(template_id, m, "template_id")
    mid = _ids(media_id, m, "media_id")
    if image_norm not in IMAGE_NORMS:
        raise ValueError(f"image_norm must be one of {IMAGE_NORMS}, got {image_norm!r}")
    w = np.ones(m, dtype=np.float64)
    if detector_score_weight:
        if faceness is None:
            raise ValueError("detector_score_weight needs faceness (the detector scores)")
        q = np.asarray(faceness, dtype=np.float64)
        if q.shape != (m,):
            raise ValueError(f"faceness has shape {q.shape}, expected ({m},)")
        if not np.all(np.isfinite(q)):
            raise ValueError("faceness must be finite")
        w *= q
    if image_norm == "unit":
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        w = np.divide(w, norms, out=np.zeros_like(w), where=norms > 0)

    templates, t_idx = np.unique(tid, return_inverse=True)
    t_idx = t_idx.ravel()
    # (template, media) groups and their sizes, through one int64 key per image
    lo = int(mid.min()) if m else 0
    span = (int(mid.max()) - lo + 1) if m else 1
    if len(templates) * span < 2**62:
        key = t_idx * np.int64(span) + (mid - lo)
        _, g_idx, g_count = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, g_idx, g_count = np.unique(np.stack([t_idx, mid]), axis=1, return_inverse=True, return_counts=True)
    g_idx = g_idx.ravel()
    w /= g_count[g_idx]
    a = sparse.csr_matrix((w.astype(np.float32), (t_idx, np.arange(m))), shape=(len(templates), m))
    feats = np.asarray(a @ x, dtype=np.float64)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.divide(feats, norms, out=np.zeros_like(feats), where=norms > 0)
    return templates, feats.astype(np.float32)


def _ids(v: Any, m: int, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.shape != (m,):
        raise ValueError(f"{name} has shape {a.shape}, expected ({m},) (one per image)")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


# ------------------------------------------------------------------------------- pair scores


def pair_rows(templates: np.ndarray, pairs: Any) -> np.ndarray:
    """Rows of ``templates`` (sorted ids) for each template id in ``pairs [P, 2]`` (intp)."""
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pairs must be [P, 2] template ids, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"pairs must hold integer template ids, got dtype {p.dtype}")
    rows = np.searchsorted(templates, p)
    np.minimum(rows, len(templates) - 1, out=rows)
    bad = templates[rows] != p
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"pair {i} names template {p[i, j]}, which has no image")
    return rows


def pair_scores(
    templates: np.ndarray, features: np.ndarray, pairs: Any, *, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """Cosine score ``[P]`` (float32) of each template pair, in blocks of ``chunk`` pairs."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    f = np.ascontiguousarray(features, dtype=np.float32)
    rows = pair_rows(np.asarray(templates), pairs)
    ra = rows[:, 0].astype(np.int32 if len(f) < 2**31 else np.int64)
    rb = rows[:, 1].astype(ra.dtype)
    del rows
    n = len(ra)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    n_groups = len(np.unique(ra)) if n < 4096 else None
    if n_groups is None:
        # cheap estimate without a second sort: distinct first templates among all
        seen = np.zeros(len(f), dtype=bool)
        seen[ra] = True
        n_groups = int(np.count_nonzero(seen))
    if n / n_groups >= _MIN_GROUP:
        return _scores_by_group(f, ra, rb, chunk)
    return _scores_by_gather(f, ra, rb, chunk)


def _scores_by_gather(f: np.ndarray, ra: np.ndarray, rb: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(len(ra), dtype=np.float32)
    for s in range(0, len(ra), chunk):
        e = min(s + chunk, len(ra))
        out[s:e] = np.einsum("ij,ij->i", f[ra[s:e]], f[rb[s:e]])
    return out


def _scores_by_group(f: np.ndarray, ra: np.ndarray, rb: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(len(ra), dtype=np.float32)
    order = np.argsort(ra, kind="stable")
    a_sorted = ra[order]
    starts = np.flatnonzero(np.r_[True, a_sorted[1:] != a_sorted[:-1]])
    ends = np.r_[starts[1:], len(ra)]
    firsts = a_sorted[starts]
    del a_sorted
    for s, e, a in zip(starts.tolist(), ends.tolist(), firsts.tolist()):
        fa = f[a]
        for s2 in range(s, e, chunk):
            idx = order[s2 : min(s2 + chunk, e)]
            out[idx] = f[rb[idx]] @ fa
    return out


# --------------------------------------------------------------------------------- TAR @ FAR


def tar_at_fars(
    scores: Any, labels: Any, fars: Sequence[float] = FARS, far_rule: str = "at-most"
) -> tuple[dict[str, float], dict[str, dict]]:
    """TAR at each target FAR from one sort: ``({key: tar}, {key: operating point})``.

    Keys are :func:`far_key` names.  Each operating point holds ``far`` (achieved),
    ``false_accepts``, ``true_accepts`` and ``threshold`` (``None`` for the reject-all point).
    """
    if far_rule not in FAR_RULES:
        raise ValueError(f"far_rule must be one of {FAR_RULES}, got {far_rule!r}")
    s = np.asarray(scores)
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.floating) and not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"scores must be a 1-D numeric array, got {s.dtype} {s.shape}")
    y = np.asarray(labels)
    if y.shape != s.shape:
        raise ValueError(f"length mismatch: {len(s)} scores but labels of shape {y.shape}")
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0/1 (1 = genuine)")
        y = y == 1
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n_pos = int(np.count_nonzero(y))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need genuine and impostor pairs, got {n_pos} genuine and {n_neg} impostor")
    for far in fars:
        if not 0.0 < float(far) <= 1.0:
            raise ValueError(f"every far must be in (0, 1], got {far!r}")

    order = np.argsort(s)[::-1]  # the one sort: descending scores
    ss = s[order]
    tp_all = np.cumsum(y[order], dtype=np.int64)
    del order
    ends = np.flatnonzero(ss[1:] != ss[:-1])
    ends = np.append(ends, len(ss) - 1)
    tp = tp_all[ends]
    del tp_all
    fp = ends + 1 - tp
    thr = ss[ends]
    del ss, ends

    if far_rule == "at-most":
        tp0 = np.r_[np.int64(0), tp]
        fp0 = np.r_[np.int64(0), fp]
        thr0 = np.r_[np.inf, thr.astype(np.float64)]
    else:
        # scikit-learn roc_curve(drop_intermediate=True): drop the inner points of straight
        # runs with equal steps, then prepend the reject-all point
        if len(fp) > 2:
            keep = np.r_[True, (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0), True]
            tp, fp, thr = tp[keep], fp[keep], thr[keep]
        tp0 = np.r_[np.int64(0), tp]
        fp0 = np.r_[np.int64(0), fp]
        thr0 = np.r_[np.inf, thr.astype(np.float64)]
        fpr = fp0 / n_neg

    metrics: dict[str, float] = {}
    details: dict[str, dict] = {}
    for far in fars:
        far = float(far)
        if far_rule == "at-most":
            k = int(np.searchsorted(fp0, int(np.floor(far * n_neg * (1 + _REL_TOL))), side="right")) - 1
        else:
            dist = np.abs(fpr - far)
            k = len(dist) - 1 - int(np.argmin(dist[::-1]))
        key = far_key(far)
        metrics[key] = float(tp0[k] / n_pos)
        details[key] = {
            "far": float(fp0[k] / n_neg),
            "false_accepts": int(fp0[k]),
            "true_accepts": int(tp0[k]),
            "threshold": None if np.isinf(thr0[k]) else float(thr0[k]),
            "resolvable": bool(far * n_neg >= 1),
        }
    return metrics, details


# ---------------------------------------------------------------------------------- protocol


def evaluate(
    image_features: Any,
    template_id: Any,
    media_id: Any,
    faceness: Any,
    pairs: Any,
    pair_label: Any,
    *,
    far_rule: str = "at-most",
    detector_score_weight: bool = True,
    image_norm: str = "keep",
    fars: Sequence[float] = FARS,
    chunk: int = DEFAULT_CHUNK,
) -> ProtocolResult:
    """IJB 1:1 verification: ``(metrics, details)``.

    ``metrics``: ``{"tar@far=1e-6": ..., ..., "tar@far=1e-1": ...}`` (plain floats, one per
    ``fars``).  ``details``: ``far_rule``, ``n_genuine``, ``n_impostor``, ``n_templates`` and,
    per metric key, the operating point used (see :func:`tar_at_fars`).
    """
    if far_rule not in FAR_RULES:
        raise ValueError(f"far_rule must be one of {FAR_RULES}, got {far_rule!r}")
    labels = np.asarray(pair_label)
    p = np.asarray(pairs)
    if labels.ndim != 1 or p.ndim != 2 or len(labels) != len(p):
        raise ValueError(f"pairs {p.shape} and pair_label {labels.shape} must be [P, 2] and [P]")
    templates, feats = template_features(
        image_features,
        template_id,
        media_id,
        faceness,
        detector_score_weight=detector_score_weight,
        image_norm=image_norm,
    )
    scores = pair_scores(templates, feats, p, chunk=chunk)
    result = evaluate_scores(scores, labels, far_rule=far_rule, fars=fars)
    result.details.update(
        {
            "n_templates": int(len(templates)),
            "detector_score_weight": bool(detector_score_weight),
            "image_norm": image_norm,
        }
    )
    return result


def evaluate_scores(
    scores: Any, pair_label: Any, *, far_rule: str = "at-most", fars: Sequence[float] = FARS
) -> ProtocolResult:
    """TAR at each FAR of template-pair scores (the second half of :func:`evaluate`, for a
    caller that already holds the scores)."""
    if far_rule not in FAR_RULES:
        raise ValueError(f"far_rule must be one of {FAR_RULES}, got {far_rule!r}")
    labels = np.asarray(pair_label)
    metrics, points = tar_at_fars(np.asarray(scores), labels, fars, far_rule)
    n_pos = int(np.count_nonzero(labels == 1))
    details: dict[str, Any] = {
        "far_rule": far_rule,
        "n_genuine": n_pos,
        "n_impostor": int(len(labels) - n_pos),
    }
    details.update(points)
    return ProtocolResult(metrics, details)
