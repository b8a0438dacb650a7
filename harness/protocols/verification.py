"""Face verification on image pairs (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

``evaluate(embeddings, issame)`` takes the ``2N`` embeddings of a pair list in dataset order
(pair ``i`` = rows ``2i`` and ``2i+1``; the caller has already fused each image with its flip,
``f(x) + f(flip x)``, when the ``flip`` option is on) and returns:

* ``accuracy``, ``accuracy_std``: InsightFace's k-fold accuracy, see
  :func:`harness.metrics.verification_accuracy` (contiguous folds, distance thresholds
  0.00 .. 3.99 chosen on the other folds, population std);
* ``tar@far=1e-3``: TAR at FAR <= 0.1 % with the cosine similarity of the pair as the score
  (:func:`harness.metrics.tar_at_far`), only where there are at least
  :data:`MIN_IMPOSTORS_FOR_TAR` impostor pairs (so FAR = 1e-3 is at least one false accept);
* ``val@far=1e-3``: InsightFace's VAL (``calculate_val``, :func:`harness.metrics.verification_val`:
  per fold a distance threshold interpolated at FAR = 1e-3 on the other folds), a different
  statistic from ``tar@far=1e-3``; left out where a fold lacks genuine or impostor pairs;
* ``accuracy_noflip`` (with ``embeddings_noflip``): the same k-fold accuracy on the plain
  embeddings, InsightFace's "Accuracy" beside "Accuracy-Flip" (= ``accuracy``).

:func:`evaluate_with_details` also returns ``details``: ``xnorm`` (InsightFace's XNorm: the mean
L2 norm of the raw, unnormalised image embeddings -- with flip, of every image and of its
mirror image, ``4N`` vectors; the mirror's embedding is recovered as fused - plain), not a
fraction, hence not a metric), ``accuracy_noflip_std``, ``val_std@far=1e-3`` and
``val_far@far=1e-3`` (the mean FAR the VAL thresholds reached on the held-out folds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.metrics import tar_at_far, verification_accuracy, verification_val
from harness.protocols import ProtocolResult

MIN_IMPOSTORS_FOR_TAR = 1000
TAR_FAR = 1e-3
VAL_FAR = 1e-3


def pair_cosine(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (zero vectors give 0)."""
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    den = na * nb
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, den, out=np.zeros_like(dots), where=den > 0)


def xnorm(*embeddings: np.ndarray) -> float:
    """InsightFace's XNorm: the mean L2 norm over every row of every array given."""
    norms = [np.linalg.norm(np.asarray(e, dtype=np.float64), axis=1) for e in embeddings]
    return float(np.mean(np.concatenate(norms)))


def evaluate_with_details(
    embeddings: Any, issame: Any, n_folds: int = 10, *, embeddings_noflip: Any = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """``(metrics, details)`` of a pair list (see the module docstring).

    ``embeddings``: the ``2N`` rows the accuracy is computed on -- flip-fused
    ``f(x) + f(flip x)`` when the flip option is on, else plain ``f(x)``.  ``embeddings_noflip``:
    with flip on, the plain ``f(x)`` of the same images (same row order); it adds
    ``accuracy_noflip`` and makes ``xnorm`` InsightFace's (plain and mirrored images).
    """
    emb = np.asarray(embeddings)
    same = np.asarray(issame)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (2N images x dim), got shape {emb.shape}")
    if same.ndim != 1:
        raise ValueError(f"issame must be 1-D, got shape {same.shape}")
    if len(emb) != 2 * len(same):
        raise ValueError(
            f"{len(emb)} embeddings for {len(same)} pairs; expected 2N = "
            f"{2 * len(same)} (pair i = rows 2i and 2i+1)"
        )
    e1, e2 = emb[0::2], emb[1::2]
    mean, std = verification_accuracy(e1, e2, same, n_folds=n_folds)
    out = {"accuracy": float(mean), "accuracy_std": float(std)}
    details: dict[str, Any] = {}
    labels = same.astype(bool)
    n_imp = int(np.count_nonzero(~labels))
    if n_imp >= MIN_IMPOSTORS_FOR_TAR and n_imp < len(labels):
        out["tar@far=1e-3"] = float(tar_at_far(pair_cosine(e1, e2), labels, TAR_FAR))
    try:
        val, val_std, val_far = verification_val(e1, e2, same, VAL_FAR, n_folds=n_folds)
    except ValueError as e:
        details["val@far=1e-3"] = f"not computed: {e}"
    else:
        out["val@far=1e-3"] = val
        details["val_std@far=1e-3"] = val_std
        details["val_far@far=1e-3"] = val_far
    if embeddings_noflip is None:
        details["xnorm"] = xnorm(emb)
    else:
        plain = np.asarray(embeddings_noflip)
        if plain.shape != emb.shape:
            raise ValueError(
                f"embeddings_noflip has shape {plain.shape}, expected {emb.shape} "
                "(the same images as embeddings, without flip)"
            )
        m, s = verification_accuracy(plain[0::2], plain[1::2], same, n_folds=n_folds)
        out["accuracy_noflip"] = float(m)
        details["accuracy_noflip_std"] = float(s)
        plain64 = plain.astype(np.float64)
        details["xnorm"] = xnorm(plain64, emb.astype(np.float64) - plain64)
    return out, details


def evaluate(
    embeddings: Any, issame: Any, n_folds: int = 10, *, embeddings_noflip: Any = None
) -> ProtocolResult:
    """Metrics of a pair list: ``accuracy``, ``accuracy_std``, (enough pairs) ``tar@far=1e-3``,
    ``val@far=1e-3`` and, with ``embeddings_noflip``, ``accuracy_noflip``
    (:func:`evaluate_with_details` as one :class:`ProtocolResult`)."""
    return ProtocolResult(
        *evaluate_with_details(embeddings, issame, n_folds, embeddings_noflip=embeddings_noflip)
    )
