"""Preprocessing backends against the model families' own pipelines, on real photographs.

The references are written here from the upstream code (not through the harness):

- MADation (src/data/loaders.py): ``cv2.imread`` (BGR, never converted) -> ``ToPILImage()`` ->
  ``Resize([224, 224])`` (default bilinear, on that PIL image) -> ``ToTensor()`` ->
  ``Normalize(0.5, 0.5)``.
- FoundPAD (src/data/loaders.py): ``cv2.imread`` -> BGR2RGB -> albumentations ``Resize(224, 224)``
  (``cv2.resize`` INTER_LINEAR) -> albumentations ``Normalize`` (ImageNet mean/std, on 0..255).
- FRoundation (src/utils/evaluation.py ``load_bin``): mxnet ``resize_short(img, 224)`` (OpenCV
  bicubic, short side to 224, long side ``224 * long // short``), then its training transform
  (src/data/transform.py: ``ToPILImage`` -> ``Resize(224, bicubic, antialias)`` -> ``ToTensor`` ->
  CLIP mean/std), whose resize is the identity on an image whose short side is already 224.

Photographs: scikit-learn's ``china.jpg`` and ``flower.jpg`` (427 x 640).  Down-scaling: the
whole photograph to 224; up-scaling: a 112 x 112 crop (the aligned-face size) to 224.  The pixels
before normalisation must be bit-identical (difference 0).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
cv2 = pytest.importorskip("cv2")
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision import transforms as T

from harness.errors import ModelError, SuiteError
from harness.models.description import read_description
from harness.models.preprocess import (
    ALL_INTERPOLATIONS,
    CLIP_MEAN,
    CLIP_STD,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    RESIZE_BACKENDS,
    Preprocess,
    build_preprocess,
)
from harness.suite import _PREPROCESS_KEYS, PreprocessSpec, parse_suite

S = 224


def _photos():
    out = []
    for name in ("china.jpg", "flower.jpg"):
        rgb = load_sample_image(name)
        assert rgb.shape == (427, 640, 3) and rgb.dtype == np.uint8
        out.append((f"{name}-down", rgb))
        out.append((f"{name}-up", np.ascontiguousarray(rgb[150:262, 250:362])))
    return out


PHOTOS = _photos()
IDS = [p[0] for p in PHOTOS]


def _spec(**kw) -> PreprocessSpec:
    return PreprocessSpec(**kw)


def _pixels(spec: PreprocessSpec, rgb: np.ndarray) -> np.ndarray:
    """The harness's pixels before normalisation, as uint8 H x W x 3 (checked to be exact)."""
    x = build_preprocess(spec, {"size": S}).transform().pixels(Image.fromarray(rgb))
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, S, S)
    u = (x * 255).round()
    assert torch.equal(u / 255, x), "pixels are not uint8 / 255"
    return u.to(torch.uint8).permute(1, 2, 0).numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def _center_crop(a: np.ndarray, s: int) -> np.ndarray:
    """torchvision's CenterCrop rule, from its documentation: top = round((h - s) / 2)."""
    h, w = a.shape[:2]
    top, left = round((h - s) / 2.0), round((w - s) / 2.0)
    return a[top:top + s, left:left + s]


# ------------------------------------------------------------------ the families' pipelines

@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_madation_pipeline_bit_exact(name, rgb):
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])             # cv2.imread, never converted
    ref = T.Compose([T.ToPILImage(), T.Resize([S, S]), T.ToTensor()])(bgr)
    spec = _spec(preset="half", size=S, resize="squash", interpolation="bilinear",
                 channel_order="bgr", resize_backend="pil")
    got = build_preprocess(spec, {"size": S}).transform()
    x = got.pixels(Image.fromarray(rgb))
    assert torch.equal(x, ref)                               # before normalisation: identical
    assert torch.equal(got(Image.fromarray(rgb)), T.Normalize(HALF, HALF)(ref.clone()))
    # today's paper.toml line (bicubic) is measurably different: the test can tell pipelines apart
    old = _pixels(_spec(preset="half", size=S, resize="squash", channel_order="bgr"), rgb)
    assert _max_diff(old[:, :, ::-1], (ref * 255).round().byte().permute(1, 2, 0).numpy()[:, :, ::-1]) >= 20


@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_foundpad_pipeline_bit_exact(name, rgb):
    ref = cv2.resize(rgb, (S, S), interpolation=cv2.INTER_LINEAR)   # albumentations Resize
    spec = _spec(preset="imagenet", size=S, resize="squash", interpolation="bilinear",
                 resize_backend="opencv")
    assert _max_diff(_pixels(spec, rgb), ref) == 0
    # after normalisation: albumentations' (x - 255 mean) / (255 std) in float32; the harness
    # divides by 255 first, so the two differ by float rounding only
    mean, std = np.float32(IMAGENET_MEAN) * 255, np.float32(IMAGENET_STD) * 255
    ref_n = (ref.astype(np.float32) - mean) / std
    got_n = build_preprocess(spec, {"size": S}).transform()(Image.fromarray(rgb)).permute(1, 2, 0).numpy()
    assert np.abs(got_n - ref_n).max() <= 2e-6
    # the PIL bilinear path (antialiased) is not FoundPAD's when it shrinks
    pil = _pixels(_spec(preset="imagenet", size=S, resize="squash", interpolation="bilinear"), rgb)
    assert (_max_diff(pil, ref) > 10) == name.endswith("down")


@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_froundation_bin_evaluation_bit_exact(name, rgb):
    h, w = rgb.shape[:2]
    # mxnet resize_short(img, 224), default interp = 2 (bicubic), computed with integer division
    nh, nw = (S * h // w, S) if h > w else (S, S * w // h)
    short = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_CUBIC)
    pil_identity = np.asarray(T.Resize(S, interpolation=T.InterpolationMode.BICUBIC,
                                       antialias=True)(Image.fromarray(short)))
    assert _max_diff(pil_identity, short) == 0     # FRoundation's own Resize(224) changes nothing
    ref = _center_crop(short, S)                   # the harness feeds square inputs
    spec = _spec(preset="clip", size=S, interpolation="bicubic", resize_backend="opencv")
    assert _max_diff(_pixels(spec, rgb), ref) == 0
    x = build_preprocess(spec, {"size": S}).transform()(Image.fromarray(rgb)).permute(1, 2, 0).numpy()
    ref_n = (ref.astype(np.float32) / 255 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    assert np.abs(x - ref_n).max() <= 2e-6


@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_default_is_open_clip_pil_bicubic_shortest_crop(name, rgb):
    """The default (open_clip's / CLIP_benchmark's / FRoundation's training transform)."""
    img = Image.fromarray(rgb)
    w, h = img.size
    nw, nh = (S, int(S * h / w)) if w <= h else (int(S * w / h), S)
    ref = _center_crop(np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC)), S)
    spec = _spec(preset="clip")
    p = build_preprocess(spec, {"size": S})
    assert (p.resize_backend, p.interpolation, p.antialias, p.resize) == ("pil", "bicubic", True, "shortest")
    assert _max_diff(_pixels(spec, rgb), ref) == 0


# -------------------------------------------------------------- each backend, each kernel

_PIL = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
_CV = {"nearest": cv2.INTER_NEAREST, "nearest-exact": cv2.INTER_NEAREST_EXACT,
       "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
       "lanczos": cv2.INTER_LANCZOS4}


@pytest.mark.parametrize("interp", INTERPOLATIONS["pil"])
@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_pil_backend_equals_pil_resize(name, rgb, interp):
    ref = np.asarray(Image.fromarray(rgb).resize((S, S), _PIL[interp]))
    assert _max_diff(_pixels(_spec(resize="squash", interpolation=interp), rgb), ref) == 0


@pytest.mark.parametrize("interp", INTERPOLATIONS["opencv"])
@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_opencv_backend_equals_cv2_resize(name, rgb, interp):
    ref = cv2.resize(rgb, (S, S), interpolation=_CV[interp])
    got = _pixels(_spec(resize="squash", interpolation=interp, resize_backend="opencv"), rgb)
    assert _max_diff(got, ref) == 0


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("interp", INTERPOLATIONS["torchvision"])
@pytest.mark.parametrize("name,rgb", PHOTOS, ids=IDS)
def test_torchvision_backend_equals_tensor_resize(name, rgb, interp, antialias):
    t = torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()    # what torchvision.io.decode_image gives
    mode = T.InterpolationMode(interp)
    ref = T.CenterCrop(S)(T.Resize(S, interpolation=mode, antialias=antialias)(t))
    spec = _spec(interpolation=interp, resize_backend="torchvision", antialias=antialias)
    assert _max_diff(_pixels(spec, rgb), ref.permute(1, 2, 0).numpy()) == 0


def test_antialias_matters_when_shrinking_not_when_growing():
    rgb = PHOTOS[0][1]
    on = _pixels(_spec(resize_backend="torchvision", interpolation="bilinear", antialias=True), rgb)
    off = _pixels(_spec(resize_backend="torchvision", interpolation="bilinear", antialias=False), rgb)
    assert _max_diff(on, off) > 10
    crop = PHOTOS[1][1]
    on = _pixels(_spec(resize_backend="torchvision", interpolation="bilinear", antialias=True), crop)
    off = _pixels(_spec(resize_backend="torchvision", interpolation="bilinear", antialias=False), crop)
    assert _max_diff(on, off) <= 1


def test_bgr_reverses_channels_of_any_backend():
    rgb = PHOTOS[1][1]
    for backend in RESIZE_BACKENDS:
        a = _pixels(_spec(resize_backend=backend, interpolation="bilinear"), rgb)
        b = _pixels(_spec(resize_backend=backend, interpolation="bilinear", channel_order="bgr"), rgb)
        assert np.array_equal(a[:, :, ::-1], b), backend


def test_opencv_transform_pickles_for_loader_workers():
    tr = build_preprocess(_spec(resize_backend="opencv", interpolation="bilinear"), {"size": S}).transform()
    img = Image.fromarray(PHOTOS[0][1])
    assert torch.equal(pickle.loads(pickle.dumps(tr))(img), tr(img))


# ------------------------------------------------------------------- keys, cache identity

def test_fingerprint_covers_backend_interpolation_antialias():
    base = Preprocess(S, "bilinear", CLIP_MEAN, CLIP_STD, resize_backend="torchvision", antialias=True)
    fps = {base.fingerprint}
    for kw in ({"resize_backend": "opencv", "antialias": False}, {"resize_backend": "pil"},
               {"antialias": False}, {"interpolation": "bicubic"}, {"channel_order": "bgr"},
               {"resize": "squash"}):
        from dataclasses import replace

        fps.add(replace(base, **kw).fingerprint)
    assert len(fps) == 7


def test_description_written_before_the_backends_reads_as_pil(tmp_path):
    """A model description cached by the previous harness (no backend keys) meant PIL resizing."""
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"model": "m", "embed_dim": 8, "preprocess": {
        "size": 224, "interpolation": "bicubic", "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
        "channel_order": "rgb", "resize": "shortest"}}))
    pre, dim = read_description(p)
    assert (pre.resize_backend, pre.antialias, dim) == ("pil", True, 8)
    assert pre == build_preprocess(_spec(preset="clip"), {"size": 224})


def test_suite_choices_match_the_backends():
    assert set(_PREPROCESS_KEYS["interpolation"][1]) == set(ALL_INTERPOLATIONS)
    assert tuple(_PREPROCESS_KEYS["resize_backend"][1]) == RESIZE_BACKENDS


def _suite(tmp_path, pre: str):
    return parse_suite(f'[models.m]\narch = "ViT-B-16"\npreprocess = {{ {pre} }}\n\n'
                       '[datasets.d]\ntype = "classification"\nformat = "imagefolder"\nroot = "data"\n'
                       'protocols = ["zeroshot"]\n', str(tmp_path / "s.toml"))


@pytest.mark.parametrize("pre,key,expect", [
    ('resize_backend = "cv2"', "resize_backend", "'pil', 'torchvision', 'opencv'"),
    ('interpolation = "cubic"', "interpolation", "'bicubic', 'bilinear'"),
    ('resize_backend = "opencv", interpolation = "box"', "interpolation", "'area'"),
    ('interpolation = "area"', "interpolation", "resize_backend = 'pil'"),
    ('resize_backend = "torchvision", interpolation = "lanczos"', "interpolation", "'nearest-exact'"),
    ('antialias = false', "antialias", "PIL always antialiases"),
    ('resize_backend = "opencv", antialias = true', "antialias", "'area'"),
    ('resize_backend = "torchvision", antialias = "yes"', "antialias", "true or false"),
])
def test_bad_preprocess_keys_stop_at_parse(tmp_path, pre, key, expect):
    with pytest.raises(SuiteError) as e:
        _suite(tmp_path, pre)
    msg = str(e.value)
    assert "\n" not in msg and "[models.m.preprocess]" in msg and f" {key}:" in msg and expect in msg


def test_suite_keys_reach_the_spec(tmp_path):
    s = _suite(tmp_path, 'resize_backend = "opencv", interpolation = "bilinear", '
                       'preset = "imagenet", resize = "squash"')
    p = build_preprocess(s.models["m"].preprocess, {"size": S})
    assert (p.resize_backend, p.interpolation, p.antialias, p.mean) == ("opencv", "bilinear", False,
                                                                        IMAGENET_MEAN)


def test_opencv_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    with pytest.raises(ModelError) as e:
        build_preprocess(_spec(resize_backend="opencv"), {"size": S}, "s.toml: [models.m] preprocess")
    msg = str(e.value)
    assert "\n" not in msg and "[models.m]" in msg and "tradeoff-bench[opencv]" in msg
    p = Preprocess(S, "bilinear", CLIP_MEAN, CLIP_STD, resize_backend="opencv", antialias=False)
    with pytest.raises(ModelError, match=r"tradeoff-bench\[opencv\]"):
        p.transform()
