"""How a model scores bona fide for MAD / PAD, and where the dev threshold comes from.

Plain functions, no pytest.  A dataset's ``scoring`` option picks the mode:

* ``"head"``: the model's own binary task head (``head = PATH`` on the model);
* ``"text"``: CLIP zero-shot with bona fide / attack prompts (:data:`DEFAULT_PROMPTS` unless
  the dataset gives ``bona_fide_prompts`` / ``attack_prompts``);
* ``"probe"``: a logistic-regression probe trained on the benchmark's own train split.

``threshold = "dev-eer"`` takes its development scores from the dataset named by ``dev``, else
from the dataset's own ``dev`` split (:func:`dev_source`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import HarnessError, SuiteError

SCORING_MODES = ("head", "text", "probe")

DEFAULT_PROMPTS: dict[str, list[str]] = {
    "bona_fide": ["a bona-fide presentation"],
    "mad": ["a face image morphing attack"],
    "pad": ["a biometric presentation attack"],
}


class ScoringUnavailable(HarnessError):
    """The model cannot score in the dataset's mode (no task head): the case skips."""


def text_prompts(
    protocol: str, bona_fide: Sequence[str] | None = None, attack: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """The (bona fide, attack) prompt lists of text scoring: the dataset's, else the defaults."""
    if protocol not in ("mad", "pad"):
        raise ValueError(f"text scoring is for 'mad' or 'pad', got {protocol!r}")
    return list(bona_fide or DEFAULT_PROMPTS["bona_fide"]), list(attack or DEFAULT_PROMPTS[protocol])


def score(
    mode: str,
    protocol: str,
    x: np.ndarray,
    *,
    model_id: str,
    head: Any = None,
    text_embeddings: Callable[[list[str]], np.ndarray] | None = None,
    bona_fide_prompts: Sequence[str] | None = None,
    attack_prompts: Sequence[str] | None = None,
    train: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    where: str = "",
) -> np.ndarray:
    """P(bona fide)-like scores (higher = more bona fide) of image features ``x``.

    ``head``: an object with ``score(x)`` (``"head"``); ``text_embeddings``: prompts -> their
    L2-normalised embeddings (``"text"``); ``train``: returns the train split's ``(x, labels)``
    (``"probe"``), ``None`` when the dataset has no train split.  ``where`` prefixes errors.
    """
    from harness.protocols import attack

    if mode == "head":
        if head is None:
            raise ScoringUnavailable(
                f"model {model_id!r} has no task head (scoring = 'head'); give it head = PATH, "
                "list only models with heads in the dataset's models = [...], or score with "
                "scoring = 'text' or 'probe'"
            )
        return np.asarray(head.score(x))
    if mode == "text":
        if text_embeddings is None:
            raise ValueError("scoring = 'text' needs text_embeddings")
        bona, atk = text_prompts(protocol, bona_fide_prompts, attack_prompts)
        return attack.text_scores(x, text_embeddings(bona), text_embeddings(atk))
    if mode == "probe":
        if train is None:
            raise HarnessError(f"{where}scoring = 'probe' needs a train split")
        tr_x, tr_y = train()
        return attack.probe_scores(tr_x, tr_y, x)
    raise ValueError(f"scoring must be one of {SCORING_MODES}, got {mode!r}")


@dataclass(frozen=True)
class DevSource:
    """Where ``dev-eer`` finds its development scores: ``kind`` is ``"none"`` (another
    threshold rule), ``"dataset"`` (the test split of dataset ``dataset``) or ``"split"`` (this
    dataset's ``dev`` split)."""

    kind: str
    dataset: str | None = None


def dev_source(threshold: Any, dev: str | None, splits: Sequence[str], where: str = "") -> DevSource:
    """Choose the development scores' source of a MAD / PAD case."""
    if threshold != "dev-eer":
        return DevSource("none")
    if dev:
        return DevSource("dataset", dev)
    if "dev" in splits:
        return DevSource("split")
    raise SuiteError(
        f"{where}threshold = 'dev-eer' needs a 'dev' split or dev = 'DATASET_ID'; "
        f"the dataset has {sorted(splits)}"
    )
