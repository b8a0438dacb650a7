"""The binary task head (MADation / FoundPAD style) on top of the image embedding."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from harness.suite import ModelSpec


@dataclass
class Head:
    """Binary task head on the L2-normalised image embedding; ``score`` = P(bona fide).

    ``polarity = "attack"`` means the head's class 1 is *attack*: the score is flipped here,
    once, so everything downstream sees higher = bona fide.
    """

    weight: np.ndarray  # [2, D]
    bias: np.ndarray  # [2]
    polarity: str = "bonafide"

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        logits = f @ self.weight.astype(np.float64).T + self.bias.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p1 = p[:, 1] / p.sum(axis=1)
        return 1.0 - p1 if self.polarity == "attack" else p1

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.weight, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.bias, dtype=np.float32).tobytes())
        h.update(self.polarity.encode())
        return h.hexdigest()[:16]


def load_head(spec: ModelSpec, embed_dim: int | None = None) -> Head:
    """The head file ``spec.head`` (read safely, shapes checked against ``embed_dim``)."""
    from harness.models.checkpoints import read_head

    w, b = read_head(spec, embed_dim)
    return Head(w, b, spec.score_polarity)
