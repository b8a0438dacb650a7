"""Zero-shot protocol: equality with open_clip's classifier builder, hand-worked metrics, errors."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch

from harness.protocols import zeroshot

TINY = "tb-test-zeroshot-tiny"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _vendored(name: str):
    return json.loads(resources.files("harness.data").joinpath(name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A one-layer open_clip model with random (seeded) weights and its tokenizer."""
    open_clip = pytest.importorskip("open_clip")
    cfg_dir = tmp_path_factory.mktemp("open_clip_cfg")
    (cfg_dir / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model(TINY, pretrained=None)
    model.eval()
    return model, open_clip.get_tokenizer(TINY)


@pytest.fixture(scope="module")
def prompts():
    """20 class names (flowers) and the 18 CIFAR-10 templates, from the vendored JSON files."""
    return (_vendored("en_classnames.json")["flowers"][:20],
            _vendored("en_zeroshot_classification_templates.json")["cifar10"])


def _encoder(model, tokenizer):
    return lambda texts: model.encode_text(tokenizer(texts))


def test_classifier_equals_open_clip(tiny_clip, prompts):
    open_clip = pytest.importorskip("open_clip")
    model, tokenizer = tiny_clip
    classnames, templates = prompts
    # open_clip formats string templates positionally; the vendored ones use "{c}".
    as_callables = [lambda c, t=t: t.format(c=c) for t in templates]
    with torch.no_grad():
        ref = open_clip.build_zero_shot_classifier(
            model, tokenizer, classnames, as_callables, num_classes_per_batch=3).numpy()
    ours = zeroshot.build_classifier(_encoder(model, tokenizer), classnames, templates,
                                     batch_size=7)
    assert ours.shape == ref.shape == (TINY_CFG["embed_dim"], len(classnames))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=0), 1.0, atol=1e-6)
    # callables give the same matrix, and the batch size changes nothing
    ours_callable = zeroshot.build_classifier(_encoder(model, tokenizer), classnames,
                                              as_callables, batch_size=1000)
    np.testing.assert_allclose(ours_callable, ours, rtol=0, atol=1e-6)

    # the same predictions and metrics on images through the tiny model's image tower
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        feats = model.encode_image(torch.randn(64, 3, 32, 32, generator=g))
    ref_logits = 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ torch.from_numpy(ref)
    ref_pred = ref_logits.argmax(dim=1)
    ours_logits = 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ torch.from_numpy(ours)
    assert torch.equal(ours_logits.argmax(dim=1), ref_pred)
    labels = ref_pred.clone()
    labels[::2] = (labels[::2] + 1) % len(classnames)  # every other sample wrong
    top5 = ref_logits.topk(5, dim=1).indices
    metrics = zeroshot.evaluate(feats.numpy(), labels.numpy(), ours).metrics
    assert metrics["acc1"] == pytest.approx(0.5)
    assert metrics["acc5"] == pytest.approx(float((top5 == labels[:, None]).any(1).float().mean()))


def test_build_classifier_by_hand_numpy_and_brace_templates():
    table = {"a": [1.0, 0.0], "x a": [3.0, 4.0], "b": [0.0, 2.0], "x b": [1.0, 0.0]}
    enc = lambda texts: np.array([table[t] for t in texts])  # noqa: E731  (numpy output)
    w = zeroshot.build_classifier(enc, ["a", "b"], ["{c}", "x {}"], batch_size=3)
    # a: mean([1, 0], [0.6, 0.8]) = [0.8, 0.4];  b: mean([0, 1], [1, 0]) = [0.5, 0.5]
    assert w.shape == (2, 2) and w.dtype == np.float32
    np.testing.assert_allclose(w[:, 0], np.array([0.8, 0.4]) / np.hypot(0.8, 0.4), atol=1e-6)
    np.testing.assert_allclose(w[:, 1], np.array([0.5, 0.5]) / np.hypot(0.5, 0.5), atol=1e-6)


def test_hand_worked_metrics():
    # identity classifier over 6 classes: the logits are 100 * the normalised features
    W = np.eye(6, dtype=np.float32)
    feats = np.array([
        [5, 4, 3, 2, 1, 0],   # label 0: rank 0
        [5, 4, 3, 2, 1, 0],   # label 1: rank 1
        [5, 4, 3, 2, 1, 0],   # label 5: rank 5
        [0, 0, 9, 0, 0, 0],   # label 2: rank 0
        [1, 0, 0, 0, 0, 0],   # label 2: class 0 above, class 1 tied and earlier -> rank 2
        [0, 0, 0, 7, 0, 0],   # label 3: rank 0
        [0, 1, 0, 0, 0, 0],   # label 0: class 1 above -> rank 1
    ], dtype=np.float32)
    labels = np.array([0, 1, 5, 2, 2, 3, 0])
    m = zeroshot.evaluate(feats, labels, W).metrics
    assert set(m) == {"acc1", "acc5", "mean_per_class_recall"}
    assert all(type(v) is float for v in m.values())
    assert m["acc1"] == pytest.approx(3 / 7)
    assert m["acc5"] == pytest.approx(6 / 7)
    # recalls: class 0: 1/2, class 1: 0, class 2: 1/2, class 3: 1, class 5: 0; class 4 absent
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 0 + 0.5 + 1 + 0) / 5)


def test_no_top5_below_five_classes():
    W = np.eye(4, dtype=np.float32)
    feats = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    m = zeroshot.evaluate(feats, np.array([0, 1, 2, 3, 1]), W).metrics
    assert set(m) == {"acc1", "mean_per_class_recall"}
    assert m["acc1"] == pytest.approx(0.8)
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_scale_and_norm_do_not_change_metrics():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8, 12)).astype(np.float32)
    W /= np.linalg.norm(W, axis=0)
    feats = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 12, 50)
    a = zeroshot.evaluate(feats, labels, W).metrics
    b = zeroshot.evaluate(feats * 37.0, torch.from_numpy(labels), torch.from_numpy(W)).metrics
    assert a == b


def test_label_out_of_range_names_both_numbers():
    W = np.eye(6, dtype=np.float32)
    with pytest.raises(ValueError, match=r"(?=.*\b7\b)(?=.*\b6\b)"):
        zeroshot.evaluate(np.ones((3, 6), np.float32), np.array([0, 7, 1]), W)
    with pytest.raises(ValueError, match="-1"):
        zeroshot.evaluate(np.ones((3, 6), np.float32), np.array([0, -1, 1]), W)


def test_dimension_mismatch():
    W = np.eye(6, dtype=np.float32)
    with pytest.raises(ValueError, match=r"(?=.*\b5\b)(?=.*\b6\b)"):
        zeroshot.evaluate(np.ones((3, 5), np.float32), np.array([0, 1, 2]), W)
    with pytest.raises(ValueError, match="3 feature rows but 2 labels"):
        zeroshot.evaluate(np.ones((3, 6), np.float32), np.array([0, 1]), W)
    with pytest.raises(ValueError, match="NaN"):
        zeroshot.evaluate(np.full((3, 6), np.nan, np.float32), np.array([0, 1, 2]), W)


def test_build_classifier_errors():
    enc = lambda texts: np.ones((len(texts), 4))  # noqa: E731
    with pytest.raises(ValueError, match="placeholder"):
        zeroshot.build_classifier(enc, ["a"], ["a photo"])
    with pytest.raises(ValueError, match="class name"):
        zeroshot.build_classifier(enc, [], ["{c}"])
    with pytest.raises(ValueError, match="template"):
        zeroshot.build_classifier(enc, ["a"], [])
    with pytest.raises(ValueError, match="expected"):
        zeroshot.build_classifier(lambda texts: np.ones((1, 4)), ["a", "b"], ["{c}"])
