"""Biometric benchmarks: face verification, IJB template verification, MAD and PAD.

Each function is parametrized by the plugin with one case per model x dataset of the suite
whose dataset lists the protocol (markers: the protocol's name and ``biometric``).
"""

import pytest

from harness.protocols import attack, ijb, verification
from harness.scores import ScoreSet, relative_paths

DEFAULT_PROMPTS = {
    "bona_fide": ["a bona-fide presentation"],
    "mad": ["a face image morphing attack"],
    "pad": ["a biometric presentation attack"],
}


def test_verification(harness_case):
    case = harness_case
    flip = case.option("flip")
    feats = case.features("test", flip=flip, unreadable="refuse")
    issame = case.dataset.split("test").meta["issame"]
    metrics = case.measure(verification.evaluate, feats.x, issame, n_folds=case.option("n_folds"),
                           n_images=len(feats))
    scores = ScoreSet(verification.pair_cosine(feats.x[0::2], feats.x[1::2]), issame)
    case.record(metrics, scores=scores, n_pairs=len(issame), flip=flip,
                n_folds=case.option("n_folds"))


def test_ijb(harness_case):
    case = harness_case
    meta = case.dataset.split("test").meta
    feats = case.features("test", flip=case.option("flip"), unreadable="refuse")
    metrics, details = case.measure(
        ijb.evaluate, feats.x, meta["template_id"], meta["media_id"], meta["faceness"],
        meta["pairs"], meta["pair_label"], far_rule=case.option("far_rule"),
        detector_score_weight=case.option("detector_score_weight"),
        image_norm=case.option("image_norm"), n_images=len(feats))
    templates, tfeats = ijb.template_features(
        feats.x, meta["template_id"], meta["media_id"], meta["faceness"],
        detector_score_weight=case.option("detector_score_weight"), image_norm=case.option("image_norm"))
    scores = ScoreSet(ijb.pair_scores(templates, tfeats, meta["pairs"]), meta["pair_label"])
    case.record(metrics, scores=scores, **details)


def _scores(case, split, dataset=None):
    """Score one split P(bona fide)-wise with the dataset's scoring mode.

    Returns (scores, labels, attack_types, video_ids, paths) over the readable images."""
    ds = dataset or case.dataset
    sp = ds.split(split)
    f = case.features(split, dataset=ds, unreadable="keep")
    keep = f.valid
    x = f.x[keep]
    mode = case.option("scoring")
    if mode == "head":
        if case.model.head is None:
            pytest.skip(f"model {case.model.id!r} has no task head (scoring = 'head'); give it "
                        "head = PATH, or score with scoring = 'text' or 'probe'")
        scores = case.model.head.score(x)
    elif mode == "text":
        bona = case.option("bona_fide_prompts") or DEFAULT_PROMPTS["bona_fide"]
        atk = case.option("attack_prompts") or DEFAULT_PROMPTS[case.protocol]
        scores = attack.text_scores(x, case.text_embeddings(bona), case.text_embeddings(atk))
    else:  # probe: logistic regression on the benchmark's own train split
        if "train" not in ds.splits:
            pytest.fail(f"{case.dataset_spec.source}: [datasets.{ds.id}] scoring = 'probe' needs a "
                        f"train split; dataset {ds.id!r} has {sorted(ds.splits)}", pytrace=False)
        tr = case.features("train", dataset=ds)
        scores = attack.probe_scores(tr.x, tr.labels, x)
    meta = sp.meta
    types = meta.get("attack_type")
    videos = meta.get("video_id")
    items = [sp.items[i] for i in range(len(sp.items)) if keep[i]]
    return (scores, sp.labels[keep], None if types is None else types[keep],
            None if videos is None else videos[keep], relative_paths(items, case.dataset_spec.root))


def _attack_case(case):
    scores, labels, types, videos, paths = _scores(case, "test")
    threshold = case.option("threshold")
    dev = {}
    if threshold == "dev-eer":
        other = case.option("dev")
        if other:
            d_scores, d_labels, _, d_videos, _ = _scores(case, "test", case.other_dataset(other))
        elif "dev" in case.dataset.splits:
            d_scores, d_labels, _, d_videos, _ = _scores(case, "dev")
        else:
            pytest.fail(f"{case.dataset_spec.source}: [datasets.{case.dataset.id}] threshold = "
                        "'dev-eer' needs a 'dev' split or dev = 'DATASET_ID'", pytrace=False)
        dev = {"dev_scores": d_scores, "dev_labels": d_labels, "dev_video_ids": d_videos}
    result = case.measure(attack.evaluate, case.protocol, scores, labels, types, videos,
                          threshold=threshold, video_average=case.option("video_average"),
                          n_images=len(scores), **dev)
    raw = ScoreSet(scores, labels, paths=paths,
                   attack_types=None if types is None else types, video_ids=videos)
    case.record(result.metrics, scores=raw, scoring=case.option("scoring"), **result.details)


def test_mad(harness_case):
    _attack_case(harness_case)


def test_pad(harness_case):
    _attack_case(harness_case)

