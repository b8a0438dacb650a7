"""Sample sizes and 95 % confidence intervals of a case's headline metrics (pure numpy).

Two methods, chosen by how the number was made:

* **Wilson score interval** (:func:`wilson`) for a proportion counted at a fixed decision rule:
  top-1/top-5 accuracy of a classifier whose parameters did not see the test set.
* **Seeded percentile bootstrap** (:func:`bootstrap_ci`) where a threshold or a fold is
  estimated from the same data: verification accuracy (k-fold thresholds re-chosen in every
  resample, pairs resampled within their fold), IJB TAR at FAR (genuine and impostor pairs
  resampled separately, threshold re-estimated), MAD/PAD error rates (bona fide and attack
  samples, or videos after averaging, resampled separately; a test-EER threshold is
  re-estimated, a development-set or fixed threshold is held).

:func:`case_statistics` is the one entry point the fixtures call: ``(n, ci, ci_method)`` of a
case from its protocol, metrics, details and (optionally) its :class:`~harness.scores.ScoreSet`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % standard normal quantile
DEFAULT_B = 500  # bootstrap resamples (percentile interval)
MAX_WORK = 2e7  # cap on resamples x samples per case (B shrinks for big sets)
MIN_B = 100
SEED = 0


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``:
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, clipped to [0, 1]."""
    if n <= 0:
        raise ValueError(f"Wilson interval needs n >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"Wilson interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def n_resamples(n: int, b: int = DEFAULT_B) -> int:
    """Resamples for a set of ``n`` samples: ``b``, fewer for big sets (``n * B <= MAX_WORK``)."""
    return int(max(MIN_B, min(b, MAX_WORK // max(n, 1))))


def resample_indices(strata: np.ndarray | list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap resample: within each stratum, draw its size with replacement.
    ``strata``: one label per row, or the row indices of each stratum (faster, precomputed)."""
    groups = _groups(strata) if isinstance(strata, np.ndarray) else strata
    out = [idx[rng.integers(0, len(idx), size=len(idx))] for idx in groups if len(idx)]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def _groups(strata: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(strata == v) for v in np.unique(strata)]


def bootstrap_ci(
    stat: Callable[[np.ndarray], dict[str, float]],
    n: int,
    *,
    strata: Any = None,
    b: int = DEFAULT_B,
    seed: int = SEED,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap of every metric ``stat(indices)`` returns.

    ``stat`` gets sorted row indices of one resample (with repeats); ``strata`` (one label per
    row) keeps each stratum's size fixed, e.g. genuine vs impostor pairs.  Seeded: the same
    inputs give the same interval.  Metrics that are not finite in a resample are left out of
    that resample; a metric finite in fewer than half of them gets no interval.
    """
    st = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    if len(st) != n:
        raise ValueError(f"strata has {len(st)} entries for {n} samples")
    rng = np.random.default_rng(seed)
    groups = _groups(st)
    draws: dict[str, list[float]] = {}
    for _ in range(int(b)):
        for k, v in stat(resample_indices(groups, rng)).items():
            if v is not None and math.isfinite(v):
                draws.setdefault(k, []).append(float(v))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for k, vals in draws.items():
        if len(vals) >= b / 2:
            lo, hi = np.percentile(vals, [lo_q, hi_q])
            out[k] = (float(lo), float(hi))
    return out


# ----------------------------------------------------------------- statistics per protocol

VERIFICATION_THRESHOLDS = np.arange(0, 4, 0.01)


def contiguous_folds(n: int, n_folds: int) -> np.ndarray:
    """Fold index of each of ``n`` rows: scikit-learn's unshuffled KFold (the first
    ``n % n_folds`` folds one longer)."""
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def kfold_accuracy(cosine: np.ndarray, same: np.ndarray, folds: np.ndarray) -> float:
    """InsightFace's k-fold accuracy from pair cosine similarities (``dist = 2 - 2 cos``,
    "same" iff ``dist < t``, ``t`` in 0.00..3.99 chosen on the other folds, first best)."""
    dist = 2.0 - 2.0 * np.asarray(cosine, dtype=np.float64)
    same = np.asarray(same).astype(bool)
    t = VERIFICATION_THRESHOLDS
    ks = np.unique(folds)
    correct = np.zeros((len(ks), len(t)))
    sizes = np.zeros(len(ks))
    for i, f in enumerate(ks):
        m = folds == f
        g = np.sort(dist[m & same])
        imp = np.sort(dist[m & ~same])
        correct[i] = np.searchsorted(g, t, "left") + (len(imp) - np.searchsorted(imp, t, "left"))
        sizes[i] = m.sum()
    total, n = correct.sum(axis=0), sizes.sum()
    accs = []
    for i in range(len(ks)):
        train = (total - correct[i]) / max(n - sizes[i], 1)
        j = int(np.argmax(train))
        accs.append(correct[i, j] / sizes[i])
    return float(np.mean(accs))


def _tar_stat(scores: np.ndarray, labels: np.ndarray, fars: dict[str, float], far_rule: str):
    from harness.protocols.ijb import tar_at_fars

    def stat(idx: np.ndarray) -> dict[str, float]:
        m, _ = tar_at_fars(scores[idx], labels[idx], list(fars.values()), far_rule=far_rule)
        return {k: v for k, v in m.items() if k in fars}

    return stat


def _attack_stat(
    protocol: str, scores, labels, types, threshold: Any, wanted: Sequence[str], rule: str | None = None
):
    """Resample statistic of MAD/PAD: the error rates as :mod:`harness.protocols.attack`
    defines them (MAD: mean over morphing methods; PAD: APCER the maximum over attack types).
    ISO rule computed directly; another ``metric_rule`` through the protocol itself."""
    from harness import metrics as M
    from harness.protocols import attack

    if rule not in (None, "iso"):

        def slow(idx: np.ndarray) -> dict[str, float]:
            t = None if types is None else types[idx]
            try:
                r = attack.evaluate(
                    protocol,
                    scores[idx],
                    labels[idx],
                    t,
                    None,
                    threshold=threshold,
                    video_average=False,
                    metric_rule=rule,
                )
            except (ValueError, TypeError):
                return {}
            return {k: r.metrics[k] for k in wanted if k in r.metrics}

        return slow
    fixed = None if threshold == "test-eer" else float(threshold)

    def rates(s: np.ndarray, y: np.ndarray, t_types) -> dict[str, float]:
        yb = y == 1
        if yb.all() or not yb.any():
            return {}
        t = M.eer_threshold(s, y) if fixed is None else fixed
        # the protocol's own definitions, without the operating points (not bootstrapped)
        out = attack.attack_metrics(s, y, t, t_types, operating_points=())
        return {k: float(v) for k, v in out.items() if k in wanted}

    def stat(idx: np.ndarray) -> dict[str, float]:
        s, y = scores[idx], labels[idx]
        t = None if types is None else types[idx]
        if protocol == "pad":
            return rates(s, y, t)
        if t is None:
            return {}
        methods = sorted(set(t[y != 1].tolist()))
        per = [rates(s[(y == 1) | (t == m)], y[(y == 1) | (t == m)], None) for m in methods]
        per = [p for p in per if p]
        if not per:
            return {}
        return {k: float(np.mean([p[k] for p in per])) for k in per[0]}

    return stat


# ------------------------------------------------------------------------ sample sizes


def sample_sizes(protocol: str, details: dict[str, Any], scores: Any = None) -> dict[str, int]:
    """``n`` of a case: what its numbers are counted over, from the protocol's details (and
    the score set where details lack it)."""
    d = details or {}
    n: dict[str, int] = {}

    def put(key: str, *names: str) -> None:
        for nm in names:
            v = d.get(nm)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                n[key] = int(v)
                return

    if protocol in ("zeroshot", "linear_probe"):
        put("images", "n_test")
        put("train_images", "n_train")
        put("val_images", "n_val")
        put("classes", "n_classes")
    elif protocol == "verification":
        put("pairs", "n_pairs")
    elif protocol == "ijb":
        put("templates", "n_templates")
        put("genuine_pairs", "n_genuine")
        put("impostor_pairs", "n_impostor")
        if "genuine_pairs" in n and "impostor_pairs" in n:
            n["pairs"] = n["genuine_pairs"] + n["impostor_pairs"]
    elif protocol in ("mad", "pad"):
        put("images", "n_samples")
        put("scored", "n_scored")
        put("bona_fide", "n_bona_fide")
        put("attack", "n_attack")
    if scores is not None and protocol in ("verification", "ijb"):
        y = np.asarray(scores.labels)
        n.setdefault("pairs", len(y))
        n.setdefault("genuine_pairs", int(np.count_nonzero(y == 1)))
        n.setdefault("impostor_pairs", int(np.count_nonzero(y != 1)))
    return n


# --------------------------------------------------------------------------- per case


def unresolvable(protocol: str, details: dict[str, Any]) -> list[str]:
    """Metrics whose operating point the data cannot resolve (IJB: FAR target below
    1 / impostor pairs; ``details[metric]["resolvable"]`` is False)."""
    out = []
    for k, v in (details or {}).items():
        if isinstance(v, dict) and v.get("resolvable") is False:
            out.append(k)
    return out


def case_statistics(
    protocol: str,
    metrics: dict[str, float],
    details: dict[str, Any],
    scores: Any = None,
    *,
    b: int = DEFAULT_B,
    seed: int = SEED,
) -> tuple[dict[str, int], dict[str, list[float]], dict[str, str]]:
    """``(n, ci, ci_method)`` of one case.

    ``ci``: ``{metric: [low, high]}`` 95 % intervals of the headline metrics this function
    knows how to resample; ``ci_method``: ``{metric: "wilson" | "bootstrap ..."}`` saying how.
    Metrics without an interval are simply absent (e.g. ``mean_per_class_recall``).
    """
    n = sample_sizes(protocol, details, scores)
    ci: dict[str, tuple[float, float]] = {}
    method: dict[str, str] = {}
    if protocol in ("zeroshot", "linear_probe") and n.get("images"):
        for k in ("acc1", "acc5"):
            if k in metrics:
                ci[k] = wilson(round(metrics[k] * n["images"]), n["images"])
                method[k] = f"wilson (n={n['images']} test images)"
    elif scores is not None and len(scores.scores):
        s = np.asarray(scores.scores, dtype=np.float64)
        y = np.asarray(scores.labels).astype(np.int64)
        nb = n_resamples(len(s), b)
        if protocol == "verification" and "accuracy" in metrics:
            n_folds = int(details.get("n_folds") or 10)
            folds = contiguous_folds(len(s), n_folds)

            def vstat(idx: np.ndarray) -> dict[str, float]:
                return {"accuracy": kfold_accuracy(s[idx], y[idx], folds[idx])}

            ci.update(bootstrap_ci(vstat, len(s), strata=folds, b=nb, seed=seed))
            for k in ci:
                method[k] = (
                    f"bootstrap over pairs within folds (B={nb}, seed={seed}, "
                    f"{n_folds}-fold thresholds re-chosen)"
                )
        elif protocol == "ijb":
            skip = set(unresolvable(protocol, details))
            fars = {
                k: float(k.split("=", 1)[1]) for k in metrics if k.startswith("tar@far=") and k not in skip
            }
            if fars:
                rule = str(details.get("far_rule") or "at-most")
                ci.update(bootstrap_ci(_tar_stat(s, y, fars, rule), len(s), strata=y, b=nb, seed=seed))
                for k in ci:
                    method[k] = (
                        f"bootstrap over pairs, genuine and impostor apart (B={nb}, "
                        f"seed={seed}, threshold re-estimated)"
                    )
        elif protocol in ("mad", "pad"):
            src = details.get("threshold_source") or "test-eer"
            thr: Any = "test-eer" if src == "test-eer" else details.get("threshold")
            if thr is None:
                thr = "test-eer"
            wanted = [k for k in ("eer", "hter", "apcer", "bpcer", "acer") if k in metrics]
            types = None if scores.attack_types is None else np.asarray(scores.attack_types)
            groups = getattr(scores, "video_ids", None)
            unit: str = "samples"
            if groups is not None and details.get("n_scored") not in (None, len(s)):
                from harness.protocols.attack import average_per_video

                s, y, types, _ = average_per_video(s, y, groups, types)
                y = y.astype(np.int64)
                unit = "videos"
            nb = n_resamples(len(s), b)
            mrule = details.get("metric_rule")
            ci.update(
                bootstrap_ci(
                    _attack_stat(protocol, s, y, types, thr, wanted, mrule), len(s), strata=y, b=nb, seed=seed
                )
            )
            held = "re-estimated" if thr == "test-eer" else f"held at the {src} threshold"
            for k in ci:
                method[k] = (
                    f"bootstrap over {unit}, bona fide and attack apart (B={nb}, "
                    f"seed={seed}, threshold {held})"
                )
    return n, {k: [float(lo), float(hi)] for k, (lo, hi) in ci.items()}, method
