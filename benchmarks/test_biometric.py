"""Biometric benchmarks: face verification, IJB template verification, MAD and PAD.

Each function is parametrized by the plugin with one case per model x dataset of the suite
whose dataset lists the protocol (markers: the protocol's name and ``biometric``).  How MAD /
PAD cases score bona fide (``scoring``) and where ``dev-eer`` finds its development set live in
:mod:`harness.scoring`.  Each case hands its raw scores over (``scores=``) for the curves and
``--save-scores``.
"""

from harness.protocols import attack, ijb, verification
from harness.scores import ScoreSet


def test_verification(harness_case):
    case = harness_case
    flip = case.option("flip")
    feats = case.features("test", flip=flip, unreadable="refuse")
    plain = case.features("test", flip=False, unreadable="refuse") if flip else None
    issame = case.dataset.split("test").meta["issame"]
    result = case.measure(
        verification.evaluate,
        feats.x,
        issame,
        n_folds=case.option("n_folds"),
        embeddings_noflip=None if plain is None else plain.x,
        n_images=len(feats),
    )
    scores = ScoreSet(verification.pair_cosine(feats.x[0::2], feats.x[1::2]), issame)
    case.record(result, scores=scores, n_pairs=len(issame), flip=flip, n_folds=case.option("n_folds"))


def test_ijb(harness_case):
    case = harness_case
    meta = case.dataset.split("test").meta
    feats = case.features("test", flip=case.option("flip"), unreadable="refuse")
    weight, norm = case.option("detector_score_weight"), case.option("image_norm")

    def run():  # templates and pair scores once: the metrics and the raw scores share them
        templates, tfeats = ijb.template_features(
            feats.x,
            meta["template_id"],
            meta["media_id"],
            meta["faceness"],
            detector_score_weight=weight,
            image_norm=norm,
        )
        scores = ijb.pair_scores(templates, tfeats, meta["pairs"])
        result = ijb.evaluate_scores(scores, meta["pair_label"], far_rule=case.option("far_rule"))
        result.details.update(n_templates=len(templates), detector_score_weight=weight, image_norm=norm)
        return result, scores

    result, scores = case.measure(run, n_images=len(feats))
    case.record(result, scores=ScoreSet(scores, meta["pair_label"]))


def _attack_case(case):
    test = case.attack_scores("test")
    result = case.measure(
        attack.evaluate,
        case.protocol,
        test.scores,
        test.labels,
        test.attack_types,
        test.video_ids,
        threshold=case.option("threshold"),
        video_average=case.option("video_average"),
        metric_rule=case.option("metric_rule"),
        n_images=len(test.scores),
        **case.dev_scores(),
    )
    scores = ScoreSet(
        test.scores, test.labels, paths=test.paths, attack_types=test.attack_types, video_ids=test.video_ids
    )
    case.record(result, scores=scores, scoring=case.option("scoring"))


def test_mad(harness_case):
    _attack_case(harness_case)


def test_pad(harness_case):
    _attack_case(harness_case)
