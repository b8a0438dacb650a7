"""Face verification on image pairs (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

``evaluate(embeddings, issame)`` takes the ``2N`` embeddings of a pair list in dataset order
(pair ``i`` = rows ``2i`` and ``2i+1``; the caller has already fused each image with its flip,
``f(x) + f(flip x)``, when the ``flip`` option is on) and returns:

* ``accuracy``, ``accuracy_std``: InsightFace's k-fold accuracy, see
  :func:`harness.metrics.verification_accuracy` (contiguous folds, distance thresholds
  0.00 .. 3.99 chosen on the other folds, population std);
* ``tar@far=1e-3``: TAR at FAR <= 0.1 % with the cosine similarity of the pair as the score
  (:func:`harness.metrics.tar_at_far`), only where there are at least
  :data:`MIN_IMPOSTORS_FOR_TAR` impostor pairs (so FAR = 1e-3 is at least one false accept).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.metrics import tar_at_far, verification_accuracy
from harness.protocols import ProtocolResult

MIN_IMPOSTORS_FOR_TAR = 1000
TAR_FAR = 1e-3


def pair_cosine(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (zero vectors give 0)."""
    a = np.asarray(emb1, dtype=np.float64)
    b = np.asarray(emb2, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    den = na * nb
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, den, out=np.zeros_like(dots), where=den > 0)


def evaluate(embeddings: Any, issame: Any, n_folds: int = 10) -> ProtocolResult:
    """Metrics of a pair list: ``accuracy``, ``accuracy_std`` and (enough pairs) ``tar@far=1e-3``."""
    emb = np.asarray(embeddings)
    same = np.asarray(issame)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (2N images x dim), got shape {emb.shape}")
    if same.ndim != 1:
        raise ValueError(f"issame must be 1-D, got shape {same.shape}")
    if len(emb) != 2 * len(same):
        raise ValueError(f"{len(emb)} embeddings for {len(same)} pairs; expected 2N = "
                         f"{2 * len(same)} (pair i = rows 2i and 2i+1)")
    e1, e2 = emb[0::2], emb[1::2]
    mean, std = verification_accuracy(e1, e2, same, n_folds=n_folds)
    out = {"accuracy": float(mean), "accuracy_std": float(std)}
    labels = same.astype(bool)
    n_imp = int(np.count_nonzero(~labels))
    if n_imp >= MIN_IMPOSTORS_FOR_TAR and n_imp < len(labels):
        out["tar@far=1e-3"] = float(tar_at_far(pair_cosine(e1, e2), labels, TAR_FAR))
    return ProtocolResult(out, {})
