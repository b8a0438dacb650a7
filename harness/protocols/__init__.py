"""Protocols: pure functions from features (arrays) to ``{metric: float}``.

This table is the registry: which dataset types a protocol fits, which marker group it belongs
to, and which per-dataset suite keys it accepts (validated by :mod:`harness.suite`).  A new
protocol is one module plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """A per-dataset suite key: its Python type(s), default, allowed values and meaning."""

    types: tuple[type, ...]
    default: Any = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                 list: "a list", dict: "a table"}
        return " or ".join(names.get(t, t.__name__) for t in self.types)


@dataclass(frozen=True)
class ProtocolInfo:
    name: str
    types: tuple[str, ...]          # dataset types it fits
    group: str                      # "general" or "biometric" (marker)
    lower_is_better: tuple[str, ...] = ()
    headline: str = "acc1"          # the metric shown in the trade-off matrix
    options: dict[str, Option] = field(default_factory=dict)


_ATTACK_OPTIONS = {
    "scoring": Option((str,), "head", ("head", "text", "probe"),
                      "how a model scores bona fide: its task head, text prompts, or a probe "
                      "trained on the benchmark's train split"),
    "bona_fide_prompts": Option((list,), None, None, "text-scoring prompts for bona fide"),
    "attack_prompts": Option((list,), None, None, "text-scoring prompts for attacks"),
    "threshold": Option((str, float, int), "test-eer", None,
                        "'dev-eer' (EER threshold of the development split), 'test-eer', or a number"),
    "dev": Option((str,), None, None, "dataset id whose test split is the development set for "
                  "'dev-eer' (default: this dataset's own 'dev' split)"),
    "video_average": Option((bool,), True, None, "average frame scores per video id"),
}

PROTOCOLS: dict[str, ProtocolInfo] = {
    "zeroshot": ProtocolInfo(
        "zeroshot", ("classification",), "general",
        options={
            "classnames": Option((str,), None, None, "JSON list or text file, one class per line"),
            "templates": Option((str,), None, None, "JSON list or text file with '{c}' placeholders"),
        }),
    "linear_probe": ProtocolInfo(
        "linear_probe", ("classification",), "general",
        options={
            "probe": Option((str,), "clip", ("clip", "clip-benchmark"),
                            "logistic regression of the CLIP paper, or CLIP_benchmark's AdamW layer"),
            "val_fraction": Option((float,), 0.2, None,
                                   "share of train carved out for the regularisation search "
                                   "where the dataset has no validation split"),
            "split_seed": Option((int,), 0, None, "seed of the train/validation carve-out"),
            "val_carve": Option((str,), "stratified", ("stratified", "random"),
                                "carve-out per class, or CLIP_benchmark's random_split"),
            "clip_benchmark_defaults": Option((bool,), False, None,
                                              "probe = 'clip-benchmark' as CLIP_benchmark 1.6 runs "
                                              "by default: no validation split, weight decay 0"),
        }),
    "verification": ProtocolInfo(
        "verification", ("verification",), "biometric", headline="accuracy",
        options={
            "flip": Option((bool,), True, None, "fuse each embedding with its horizontal flip"),
            "n_folds": Option((int,), 10, None, "cross-validation folds (contiguous blocks)"),
        }),
    "ijb": ProtocolInfo(
        "ijb", ("ijb",), "biometric", headline="tar@far=1e-4",
        options={
            "flip": Option((bool,), True, None, "add the horizontally flipped image's feature"),
            "far_rule": Option((str,), "at-most", ("at-most", "insightface"),
                               "TAR at the largest FAR <= target, or InsightFace's nearest FAR"),
            "detector_score_weight": Option((bool,), True, None,
                                            "multiply image features by the detector score"),
            "image_norm": Option((str,), "keep", ("keep", "unit"),
                                 "keep image feature norms, or L2-normalise before pooling"),
        }),
    "mad": ProtocolInfo("mad", ("mad",), "biometric", lower_is_better=("eer",), headline="eer",
                        options=dict(_ATTACK_OPTIONS)),
    "pad": ProtocolInfo("pad", ("pad",), "biometric", lower_is_better=("hter",), headline="hter",
                        options=dict(_ATTACK_OPTIONS)),
}

# Metrics where lower is better (arrows in the report, gates, --max-drop direction).
LOWER_IS_BETTER = frozenset({
    "eer", "hter", "apcer", "bpcer", "acer", "accuracy_std",
}) | frozenset(f"{a}@{b}={x}" for a, b in (("bpcer", "apcer"), ("apcer", "bpcer"))
               for x in ("0.01", "0.05", "0.1", "0.2"))


def lower_is_better(metric: str) -> bool:
    base = metric.split("[", 1)[0]
    return base in LOWER_IS_BETTER or base.startswith(("apcer", "bpcer", "eer", "hter", "acer"))
