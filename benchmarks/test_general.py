"""General-vision benchmarks: zero-shot classification and linear probe.

Each function is parametrized by the plugin with one case per model x dataset of the suite
whose dataset lists the protocol (ids ``model-dataset``; markers ``zeroshot``/``linear_probe``
and ``general``).
"""

from harness.data.prompts import prompts_for

# Protocol modules import torch; they are imported inside the functions so that
# `pytest --collect-only` stays fast.


def test_zeroshot(harness_case):
    from harness.protocols import zeroshot

    case = harness_case
    test = case.features("test")
    prompts = prompts_for(case.dataset_spec, case.dataset.classnames)
    classifier = case.text_classifier(prompts.classnames, prompts.templates)
    result = case.measure(zeroshot.evaluate, test.x, test.labels, classifier, n_images=len(test))
    case.record(result, n_test=len(test), **prompts.details())


def test_linear_probe(harness_case):
    from harness.protocols import linear_probe

    case = harness_case
    train, test = case.features("train"), case.features("test")
    val = case.features("val") if "val" in case.dataset.splits else None
    result = case.measure(
        linear_probe.evaluate,
        train.x,
        train.labels,
        test.x,
        test.labels,
        val_x=None if val is None else val.x,
        val_y=None if val is None else val.labels,
        variant=case.option("probe"),
        val_fraction=case.option("val_fraction"),
        split_seed=case.option("split_seed"),
        val_carve=case.option("val_carve"),
        clip_benchmark_defaults=case.option("clip_benchmark_defaults"),
        device=case.h.device,
        n_classes=len(case.dataset.classnames or []) or None,
        n_images=len(train) + len(test),
    )
    case.record(result, n_train=len(train), n_test=len(test))
