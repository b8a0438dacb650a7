"""Protocols: pure functions from features (arrays) to a :class:`ProtocolResult`.

This table is the registry and the single source of everything the rest of the harness needs
to know about a protocol: which dataset types it fits, its marker (and description) and marker
group, the metric names it produces (gates are validated against them), which of them are
lower-is-better, its headline metric, how the report shows it, and which per-dataset suite keys
it accepts (validated by :mod:`harness.suite`).  A new protocol is one module plus one entry
here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NamedTuple

Need = tuple[str | None, str, bool]  # (dataset id, None = the case's own; split; flip)


class ProtocolResult(NamedTuple):
    """What every protocol's ``evaluate`` returns.

    ``metrics``: ``{name: plain float}``; ``details``: plain values describing how they were
    obtained (threshold used, operating points, counts...).  A named tuple, so
    ``metrics, details = evaluate(...)`` works too."""

    metrics: dict[str, float]
    details: dict[str, Any]


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
        names = {
            bool: "a boolean",
            int: "an integer",
            float: "a number",
            str: "a string",
            list: "a list",
            dict: "a table",
        }
        return " or ".join(names.get(t, t.__name__) for t in self.types)


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


def _match(pattern: str, name: str) -> bool:
    return _pattern(pattern).match(name) is not None


@dataclass(frozen=True)
class ProtocolInfo:
    """One protocol.  Metric names in ``metrics`` and ``lower_is_better`` are exact names or
    patterns where ``*`` stands for any text (``"eer[*]"``: per attack method)."""

    name: str
    types: tuple[str, ...]  # dataset types it fits
    group: str  # marker group: a key of GROUPS
    description: str  # the marker's description (pytest --markers)
    metrics: tuple[str, ...]  # every metric name it can produce
    lower_is_better: tuple[str, ...] = ()
    headline: str = "acc1"  # the metric shown in the trade-off matrix
    gelo: bool = False  # general ability: GELO column and summary (higher-better)
    detail_tables: bool = False  # report: one models x metrics table per dataset
    per_method_table: bool = False  # report: per attack method table (metric[method] keys)
    options: dict[str, Option] = field(default_factory=dict)
    # the features a case reads: (option getter, the dataset's splits) -> [(dataset id or None
    # for the case's own, split, flip)]; the feature stage extracts them before the cases run
    feature_needs: Callable[[Callable[[str], Any], Sequence[str]], list[Need]] = field(
        default=lambda option, splits: _own_test_need()
    )

    def produces(self, metric: str) -> bool:
        return any(_match(p, metric) for p in self.metrics)

    def is_lower_better(self, metric: str) -> bool:
        return any(_match(p, metric) for p in self.lower_is_better)


# Marker groups: name -> description (the protocols of a group are listed after it).
GROUPS = {
    "general": "general-vision protocols",
    "biometric": "biometric protocols",
}


_ATTACK_OPTIONS = {
    "scoring": Option(
        (str,),
        "head",
        ("head", "text", "probe"),
        "how a model scores bona fide: its task head, text prompts, or a probe "
        "trained on the benchmark's train split",
    ),
    "bona_fide_prompts": Option((list,), None, None, "text-scoring prompts for bona fide"),
    "attack_prompts": Option((list,), None, None, "text-scoring prompts for attacks"),
    "threshold": Option(
        (str, float, int),
        "test-eer",
        None,
        "'dev-eer' (EER threshold of the development split), 'test-eer', or a number",
    ),
    "dev": Option(
        (str,),
        None,
        None,
        "dataset id whose test split is the development set for "
        "'dev-eer' (default: this dataset's own 'dev' split)",
    ),
    "video_average": Option((bool,), True, None, "average frame scores per video id"),
    "metric_rule": Option(
        (str,),
        "iso",
        ("iso", "madation", "foundpad"),
        "ISO/IEC 30107-3 definitions, or MADation's / FoundPAD's evaluation code",
    ),
    "video_id_pattern": Option((str,), None, None, "regex, one group: video id from the relative path"),
    "allow_outside_root": Option((bool,), False, None, "list paths may resolve outside the CSV's folder"),
}

_CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_ATTACK_LOWER = (
    "eer",
    "hter",
    "apcer",
    "apcer_pooled",
    "bpcer",
    "acer",
    "bpcer@apcer=*",
    "apcer@bpcer=*",
    "apcer[*]",
)
_ATTACK_METRICS = ("auc",) + _ATTACK_LOWER


def _own_test_need() -> list[Need]:
    return [(None, "test", False)]


def _probe_needs(option: Callable[[str], Any], splits: Sequence[str]) -> list[Need]:
    return [(None, s, False) for s in ("train", "val", "test") if s in splits]


def _verification_needs(option: Callable[[str], Any], splits: Sequence[str]) -> list[Need]:
    flip = bool(option("flip"))
    first: list[Need] = [(None, "test", flip)]
    return first + ([(None, "test", False)] if flip else [])


def _ijb_needs(option: Callable[[str], Any], splits: Sequence[str]) -> list[Need]:
    return [(None, "test", bool(option("flip")))]


def _attack_needs(option: Callable[[str], Any], splits: Sequence[str]) -> list[Need]:
    probe = option("scoring") == "probe"
    out: list[Need] = [(None, "test", False)]
    out += [(None, "train", False)] if probe else []
    if option("threshold") == "dev-eer":
        dev = option("dev")
        if dev:  # the other dataset's test split (and its train split for a probe)
            out += [(dev, "test", False)] + ([(dev, "train", False)] if probe else [])
        else:
            out.append((None, "dev", False))
    return out


PROTOCOLS: dict[str, ProtocolInfo] = {
    "zeroshot": ProtocolInfo(
        "zeroshot",
        ("classification",),
        "general",
        "zero-shot classification with CLIP prompt ensembles",
        _CLASSIFICATION_METRICS,
        options={
            "classnames": Option((str,), None, None, "JSON list or text file, one class per line"),
            "templates": Option((str,), None, None, "JSON list or text file with '{c}' placeholders"),
            "sun397_split": Option((str,), "partition01", ("partition01", "all"), "SUN397 images used"),
        },
        gelo=True,
    ),
    "linear_probe": ProtocolInfo(
        "linear_probe",
        ("classification",),
        "general",
        "logistic-regression linear probe on frozen image features",
        _CLASSIFICATION_METRICS,
        options={
            "probe": Option(
                (str,),
                "clip",
                ("clip", "clip-benchmark"),
                "logistic regression of the CLIP paper, or CLIP_benchmark's AdamW layer",
            ),
            "val_fraction": Option(
                (float,),
                0.2,
                None,
                "share of train carved out for the regularisation search "
                "where the dataset has no validation split",
            ),
            "split_seed": Option((int,), 0, None, "seed of the train/validation carve-out"),
            "sun397_split": Option((str,), "partition01", ("partition01", "all"), "SUN397 images used"),
            "val_carve": Option(
                (str,),
                "stratified",
                ("stratified", "random"),
                "carve-out per class, or CLIP_benchmark's random_split",
            ),
            "clip_benchmark_defaults": Option(
                (bool,),
                False,
                None,
                "probe = 'clip-benchmark' as CLIP_benchmark 1.6 runs "
                "by default: no validation split, weight decay 0",
            ),
        },
        feature_needs=_probe_needs,
        gelo=True,
    ),
    "verification": ProtocolInfo(
        "verification",
        ("verification",),
        "biometric",
        "face verification, InsightFace 10-fold accuracy",
        ("accuracy", "accuracy_std", "accuracy_noflip", "tar@far=*", "val@far=*"),
        lower_is_better=("accuracy_std",),
        headline="accuracy",
        detail_tables=True,
        options={
            "flip": Option((bool,), True, None, "fuse each embedding with its horizontal flip"),
            "n_folds": Option((int,), 10, None, "cross-validation folds (contiguous blocks)"),
        },
        feature_needs=_verification_needs,
    ),
    "ijb": ProtocolInfo(
        "ijb",
        ("ijb",),
        "biometric",
        "IJB-B / IJB-C template verification, TAR at FAR",
        ("tar@far=*",),
        headline="tar@far=1e-4",
        detail_tables=True,
        options={
            "flip": Option((bool,), True, None, "add the horizontally flipped image's feature"),
            "far_rule": Option(
                (str,),
                "at-most",
                ("at-most", "insightface"),
                "TAR at the largest FAR <= target, or InsightFace's nearest FAR",
            ),
            "detector_score_weight": Option(
                (bool,), True, None, "multiply image features by the detector score"
            ),
            "image_norm": Option(
                (str,), "keep", ("keep", "unit"), "keep image feature norms, or L2-normalise before pooling"
            ),
        },
        feature_needs=_ijb_needs,
    ),
    "mad": ProtocolInfo(
        "mad",
        ("mad",),
        "biometric",
        "morphing attack detection",
        _ATTACK_METRICS + tuple(f"{m}[*]" for m in _ATTACK_METRICS),
        lower_is_better=_ATTACK_LOWER + tuple(f"{m}[*]" for m in _ATTACK_LOWER),
        headline="eer",
        gelo=False,
        detail_tables=True,
        per_method_table=True,
        options=dict(_ATTACK_OPTIONS),
        feature_needs=_attack_needs,
    ),
    "pad": ProtocolInfo(
        "pad",
        ("pad",),
        "biometric",
        "presentation attack detection",
        _ATTACK_METRICS,
        lower_is_better=_ATTACK_LOWER,
        headline="hter",
        gelo=False,
        detail_tables=True,
        options=dict(_ATTACK_OPTIONS),
        feature_needs=_attack_needs,
    ),
}


def markers() -> dict[str, str]:
    """pytest markers: one per protocol, then one per group (listing its protocols)."""
    out = {p.name: p.description for p in PROTOCOLS.values()}
    for g, desc in GROUPS.items():
        members = [p.name for p in PROTOCOLS.values() if p.group == g]
        out[g] = f"{desc} ({', '.join(members)})"
    return out


def lower_is_better(metric: str, protocol: str | None = None) -> bool:
    """Whether lower values of ``metric`` are better (report arrows, gates, --max-drop).

    Decided by the protocol's registry entry, or by any protocol's when none is given."""
    infos = [PROTOCOLS[protocol]] if protocol in PROTOCOLS else PROTOCOLS.values()
    return any(info.is_lower_better(metric) for info in infos)


def produces(protocol: str, metric: str) -> bool:
    """Whether ``protocol`` can produce a metric named ``metric``."""
    return PROTOCOLS[protocol].produces(metric)
