"""The feature stage: plan every feature the selected cases need, extract them dataset-major.

A *need* is (dataset, split, flip) for one model.  :func:`plan` collects them from the cases
(through each protocol's ``feature_needs`` in the registry) and groups them by (dataset, split,
flip), in suite order.  The harness runs each group with
:meth:`harness.features.FeatureCache.features_many`: each image is decoded once for every model
that needs it, models with the same preprocessing share the resize, and every model's features
are committed chunk by chunk to its own cache entry.  The cases then read from the cache.
Under ``pytest -n N`` with fewer models than workers every worker computes the plan of the
whole selection and helps with its large splits first (:mod:`harness.share`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from harness.features import Need, extract_many  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Group:
    dataset: str
    split: str
    flip: bool
    models: tuple[str, ...]


def plan(
    cases: Iterable[tuple[str, str, str]],
    needs_of: Callable[[str, str, str], list[tuple[str, str, bool]]],
    dataset_order: list[str],
    model_order: list[str],
) -> list[Group]:
    """Groups of models per (dataset, split, flip), dataset-major in suite order.

    ``cases`` are (protocol, model, dataset); ``needs_of(protocol, model, dataset)`` lists the
    (dataset, split, flip) that case reads (a dataset it cannot open lists nothing)."""
    want: dict[tuple[str, str, bool], dict[str, None]] = {}
    for protocol, model, dataset in cases:
        for d, split, flip in needs_of(protocol, model, dataset):
            want.setdefault((d, split, bool(flip)), {})[model] = None
    d_pos = {d: i for i, d in enumerate(dataset_order)}
    m_pos = {m: i for i, m in enumerate(model_order)}
    split_pos = {"train": 0, "val": 1, "dev": 2, "test": 3}
    groups = [
        Group(d, s, f, tuple(sorted(ms, key=lambda m: m_pos.get(m, len(m_pos)))))
        for (d, s, f), ms in want.items()
    ]
    groups.sort(key=lambda g: (d_pos.get(g.dataset, len(d_pos)), split_pos.get(g.split, 9), g.split, g.flip))
    return groups
