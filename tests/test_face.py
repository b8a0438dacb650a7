"""Face verification: the .bin / LFW / IJB formats, 5-point alignment, and the two protocols."""

from __future__ import annotations

import io
import math
import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from harness.data import formats, open_dataset
from harness.data.align import (ARCFACE_TEMPLATE_112, align_face,
                                apply_transform, similarity_transform, warp_affine)
from harness.data.insightface_bin import read_pack
from harness.errors import DataError, DataMissing, UnsafePickleError
from harness.metrics import tar_at_far, verification_accuracy
from harness.protocols import ijb as ijb_protocol
from harness.protocols import verification as verification_protocol
from harness.protocols.ijb import (far_key, pair_scores, tar_at_fars, template_features,
                                   _scores_by_gather, _scores_by_group)
from harness.suite import DatasetSpec


def spec(fmt: str, root, type_: str = "verification") -> DatasetSpec:
    proto = "ijb" if type_ == "ijb" else "verification"
    return DatasetSpec(id="d", type=type_, format=fmt, root=str(root), source="suite.toml",
                       protocols=(proto,))


def jpeg(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def test_formats_registered():
    table = formats()
    assert table["insightface-bin"][1] == ("verification",)
    assert table["lfw-pairs"][1] == ("verification",)
    assert table["ijb"][1] == ("ijb",)


# ----------------------------------------------------------------------------- insightface-bin

@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("as_array", [False, True])
def test_bin_pack_read(tmp_path, protocol, as_array):
    imgs = [jpeg(i) for i in range(6)]
    bins = [np.frombuffer(b, dtype=np.uint8) for b in imgs] if as_array else imgs
    path = tmp_path / "lfw.bin"
    with open(path, "wb") as f:
        pickle.dump((bins, [True, False, True]), f, protocol=protocol)
    ds = open_dataset(spec("insightface-bin", path))
    split = ds.split("test")
    assert len(split) == 6 and split.labels is None
    assert all(isinstance(x, bytes) for x in split.items)
    assert split.items == imgs
    assert split.meta["issame"].dtype == np.bool_
    assert split.meta["issame"].tolist() == [True, False, True]
    img = split.load(3)
    assert img.mode == "RGB" and img.size == (12, 10)
    fp = split.fingerprint()
    with open(path, "wb") as f:                  # a different pack at the same path
        pickle.dump((bins + bins[:2], [True, False, True, False]), f, protocol=protocol)
    assert open_dataset(spec("insightface-bin", path)).split("test").fingerprint() != fp


def test_bin_pack_issame_as_numpy_bool_array(tmp_path):
    path = tmp_path / "p.bin"
    with open(path, "wb") as f:
        pickle.dump(([jpeg(0), jpeg(1)], np.array([False])), f, protocol=2)
    images, same = read_pack(path)
    assert same.tolist() == [False] and len(images) == 2


def _sbs(b: bytes) -> bytes:             # Python 2 SHORT_BINSTRING (a py2 str)
    return b"U" + bytes([len(b)]) + b


def _binstring(b: bytes) -> bytes:       # Python 2 BINSTRING
    return b"T" + struct.pack("<i", len(b)) + b


def py2_pack(images: list[bytes], issame: list[bool], as_array: bool) -> bytes:
    """A protocol-2 pickle as Python 2 writes it: py2 str images, or numpy.core arrays."""
    out = [b"\x80\x02(]("]
    for img in images:
        if not as_array:
            out.append(_binstring(img))
            continue
        out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                   b"K\x00\x85" + _sbs(b"b") + b"\x87R")
        out.append(b"(K\x01" + b"J" + struct.pack("<i", len(img)) + b"\x85"
                   + b"cnumpy\ndtype\n" + _sbs(b"u1") + b"K\x00K\x01\x87R"
                   + b"(K\x03" + _sbs(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                   + b"\x89" + _binstring(img) + b"tb")
    out.append(b"e](")
    out.extend(b"\x88" if s else b"\x89" for s in issame)
    out.append(b"et.")
    return b"".join(out)


@pytest.mark.parametrize("as_array", [False, True])
def test_bin_pack_python2(tmp_path, as_array):
    imgs = [jpeg(i) for i in range(4)]
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(py2_pack(imgs, [False, True], as_array))
    images, same = read_pack(path)
    assert images == imgs
    assert same.tolist() == [False, True]


def test_bin_pack_refuses_code_and_creates_nothing(tmp_path):
    victim = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.bin"

    class Evil:
        def __reduce__(self):
            return (open, (str(victim), "w"))

    evil.write_bytes(pickle.dumps(([Evil(), b"x"], [True]), protocol=2))
    with pytest.raises(UnsafePickleError) as e:
        open_dataset(spec("insightface-bin", evil))
    assert str(evil) in str(e.value) and "io.open" in str(e.value)
    assert not victim.exists()

    # the classic os.system payload, protocol 0
    evil.write_bytes(b"cos\nsystem\n(V touch " + str(victim).encode() + b"\ntR.")
    with pytest.raises(UnsafePickleError, match=r"forbidden global os\.system"):
        read_pack(evil)
    assert not victim.exists()
    assert isinstance(UnsafePickleError("x"), DataError)


def test_bin_pack_refuses_non_uint8_arrays(tmp_path):
    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        pickle.dump(([np.zeros(3, np.float64), b"x"], [True]), f, protocol=2)
    with pytest.raises(UnsafePickleError, match="f8"):
        read_pack(path)
    with open(path, "wb") as f:
        pickle.dump(([np.zeros(2, dtype=object), b"x"], [True]), f, protocol=4)
    with pytest.raises(UnsafePickleError, match="'O8'"):
        read_pack(path)


def test_bin_pack_shape_errors(tmp_path):
    path = tmp_path / "bad.bin"
    with open(path, "wb") as f:
        pickle.dump(([b"a", b"b", b"c"], [True]), f, protocol=2)
    with pytest.raises(DataError, match=r"bad\.bin.*3 images is an odd count"):
        read_pack(path)
    with open(path, "wb") as f:
        pickle.dump(([b"a", b"b", b"c", b"d"], [True, False, True]), f, protocol=2)
    with pytest.raises(DataError) as e:
        read_pack(path)
    msg = str(e.value)
    assert str(path) in msg and "4 images" in msg and "3 flags" in msg
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable pickle"):
        read_pack(path)
    with pytest.raises(DataMissing, match="nope.bin"):
        open_dataset(spec("insightface-bin", tmp_path / "nope.bin"))


# ----------------------------------------------------------------------------------- lfw-pairs

def make_lfw(root, sub: str | None, header: str = "2\t2"):
    names = ["Ann_A", "Bob_B", "Cid_C"]
    base = root / sub if sub else root
    for k, name in enumerate(names):
        (base / name).mkdir(parents=True)
        for n in (1, 2, 3):
            (base / name / f"{name}_{n:04d}.jpg").write_bytes(jpeg(10 * k + n))
    lines = [header,
             "Ann_A\t1\t2", "Bob_B\t1\t3",                   # set 1 matched
             "Ann_A\t3\tBob_B\t2", "Cid_C\t1\tAnn_A\t1",      # set 1 mismatched
             "Cid_C\t2\t3", "Bob_B\t2\t3",                   # set 2 matched
             "Bob_B\t1\tCid_C\t3", "Ann_A\t2\tCid_C\t2"]      # set 2 mismatched
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("sub", ["lfw", None])
def test_lfw_pairs(tmp_path, sub):
    base = make_lfw(tmp_path, sub)
    split = open_dataset(spec("lfw-pairs", tmp_path)).split("test")
    assert split.meta["issame"].tolist() == [True, True, False, False, True, True, False, False]
    assert len(split) == 16 and split.labels is None
    rel = [os.path.relpath(p, base) for p in split.items]
    assert rel[:4] == [os.path.join("Ann_A", "Ann_A_0001.jpg"), os.path.join("Ann_A", "Ann_A_0002.jpg"),
                       os.path.join("Bob_B", "Bob_B_0001.jpg"), os.path.join("Bob_B", "Bob_B_0003.jpg")]
    assert rel[6:8] == [os.path.join("Cid_C", "Cid_C_0001.jpg"), os.path.join("Ann_A", "Ann_A_0001.jpg")]
    assert split.load(0).size == (12, 10)
    fp = split.fingerprint()
    (base / "Bob_B" / "Bob_B_0003.jpg").write_bytes(jpeg(99, size=(14, 10)))
    assert open_dataset(spec("lfw-pairs", tmp_path)).split("test").fingerprint() != fp


def test_lfw_missing_image_and_bad_header(tmp_path):
    base = make_lfw(tmp_path, "lfw")
    gone = base / "Cid_C" / "Cid_C_0003.jpg"
    gone.unlink()
    with pytest.raises(DataError) as e:
        open_dataset(spec("lfw-pairs", tmp_path))
    assert str(gone) in str(e.value) and "pair 5 of 8" in str(e.value)
    (tmp_path / "pairs.txt").write_text("10\t300\nAnn_A\t1\t2\n")
    with pytest.raises(DataError, match="6000 pair lines"):
        open_dataset(spec("lfw-pairs", tmp_path))
    (tmp_path / "pairs.txt").unlink()
    with pytest.raises(DataMissing, match="pairs.txt"):
        open_dataset(spec("lfw-pairs", tmp_path))


# ---------------------------------------------------------------------------------- alignment

def similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([scale * r, [[tx], [ty]]])


@pytest.mark.parametrize("params", [(1.0, 0.0, 0.0, 0.0), (1.7, 23.0, 31.5, -4.25),
                                    (0.6, -140.0, 200.0, 80.0)])
def test_similarity_transform_recovered(params):
    m = similarity(*params)
    landmarks = apply_transform(m, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(similarity_transform(ARCFACE_TEMPLATE_112, landmarks), m,
                               atol=1e-6)
    back = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(apply_transform(back, landmarks), ARCFACE_TEMPLATE_112,
                               atol=1e-6)


def test_similarity_transform_is_least_squares_without_reflection():
    rng = np.random.default_rng(3)
    m = similarity(1.3, 10.0, 5.0, 7.0)
    noisy = apply_transform(m, ARCFACE_TEMPLATE_112) + rng.normal(0, 0.5, (5, 2))
    est = similarity_transform(ARCFACE_TEMPLATE_112, noisy)
    r = est[:, :2]
    assert np.linalg.det(r) > 0 and abs(r[0, 0] - r[1, 1]) < 1e-12
    res = np.sum((apply_transform(est, ARCFACE_TEMPLATE_112) - noisy) ** 2)
    for d in ([1e-3, 0, 0, 0], [0, 1e-3, 0, 0], [0, 0, 1e-3, 0], [0, 0, 0, 1e-3]):
        s, th, tx, ty = d                               # any nudge makes the fit worse
        nudged = similarity(1 + s, math.degrees(th), 0, 0)[:, :2] @ r
        alt = np.hstack([nudged, est[:, 2:] + np.array([[tx], [ty]])])
        assert np.sum((apply_transform(alt, ARCFACE_TEMPLATE_112) - noisy) ** 2) >= res


def test_warp_pixel_convention():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (140, 150, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    shifted = warp_affine(img, np.array([[1.0, 0, -10], [0, 1.0, -5]]))
    assert np.array_equal(np.asarray(shifted), arr[5:117, 10:122])
    square = Image.fromarray(arr[:112, :112])
    rot = warp_affine(square, np.array([[0.0, 1, 0], [-1, 0, 111]]))   # 90 deg, exact
    assert np.array_equal(np.asarray(rot), np.rot90(arr[:112, :112]))
    lm = ARCFACE_TEMPLATE_112 + [10, 5]
    out = np.asarray(align_face(img, lm)).astype(int)
    assert out.shape == (112, 112, 3)
    assert np.abs(out - arr[5:117, 10:122]).max() <= 1


def gradient_face() -> np.ndarray:
    """A 112x112 pattern that bilinear resampling reproduces (linear in x and y)."""
    y, x = np.mgrid[0:112, 0:112]
    return np.stack([2 * x, 2 * y, 20 + x + y], axis=-1).astype(np.uint8)


def test_align_face_undoes_a_similarity():
    face = gradient_face()
    m = similarity(1.6, 25.0, 90.0, 20.0)            # template frame -> photo frame
    photo = warp_affine(Image.fromarray(face), m, size=(300, 260))
    landmarks = apply_transform(m, ARCFACE_TEMPLATE_112)
    out = np.asarray(align_face(photo, landmarks)).astype(int)
    assert np.abs(out[4:-4, 4:-4] - face[4:-4, 4:-4].astype(int)).max() <= 2


# ----------------------------------------------------------------------------------------- ijb

def make_ijb(root, prefix="ijbc"):
    """3 templates: t10 (media 1: 2 images, media 2: 1), t20 (media 3: 1), t30 (media 1: 1)."""
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    face = Image.fromarray(gradient_face())
    rows = [("1.png", 10, 1), ("2.png", 10, 1), ("3.png", 10, 2), ("4.png", 20, 3),
            ("5.png", 30, 1)]
    ms = {}
    for k, (name, _, _) in enumerate(rows):
        m = similarity(1.0 + 0.2 * k, 10.0 * k - 20.0, 60.0 + 5 * k, 40.0)
        warp_affine(face, m, size=(320, 340)).save(root / "loose_crop" / name)
        ms[name] = m
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {md}\n" for n, t, md in rows))
    # landmark lines in another order than the tid_mid file: joined by name
    lines = []
    for k, (name, _, _) in reversed(list(enumerate(rows))):
        pts = apply_transform(ms[name], ARCFACE_TEMPLATE_112).ravel()
        lines.append(name + " " + " ".join(f"{v:.6f}" for v in pts) + f" {0.5 + 0.1 * k:.3f}\n")
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("".join(lines))
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text(
        "10 20 0\n10 30 1\n20 30 0\n")
    return rows


def test_ijb_format(tmp_path):
    root = tmp_path / "IJBC"
    make_ijb(root)
    ds = open_dataset(spec("ijb", root, "ijb"))
    split = ds.split("test")
    assert ds.meta["set"] == "ijbc"
    assert [os.path.basename(p) for p in split.items] == ["1.png", "2.png", "3.png", "4.png",
                                                          "5.png"]
    meta = split.meta
    assert meta["template_id"].tolist() == [10, 10, 10, 20, 30]
    assert meta["media_id"].tolist() == [1, 1, 2, 3, 1]
    np.testing.assert_allclose(meta["faceness"], [0.5, 0.6, 0.7, 0.8, 0.9])
    assert meta["pairs"].tolist() == [[10, 20], [10, 30], [20, 30]]
    assert meta["pair_label"].tolist() == [0, 1, 0]
    reader = pickle.loads(pickle.dumps(split.reader))     # DataLoader workers pickle it
    for i in (0, 4):
        img = reader(split.items[i])
        assert img.mode == "RGB" and img.size == (112, 112)
        out = np.asarray(img).astype(int)
        assert np.abs(out[4:-4, 4:-4] - gradient_face()[4:-4, 4:-4]).max() <= 2
    assert np.array_equal(np.asarray(split.load(2)), np.asarray(reader(split.items[2])))


def test_ijb_prefix_detection_and_errors(tmp_path):
    root = tmp_path / "data"
    make_ijb(root, "ijbb")
    assert open_dataset(spec("ijb", root, "ijb")).meta["set"] == "ijbb"
    make_ijb(tmp_path / "tmp2", "ijbc")
    for f in (tmp_path / "tmp2" / "meta").iterdir():
        f.rename(root / "meta" / f.name)
    with pytest.raises(DataError, match="both the ijbb_\\* and the ijbc_\\*"):
        open_dataset(spec("ijb", root, "ijb"))
    hinted = tmp_path / "my_IJBB_copy"
    root.rename(hinted)
    assert open_dataset(spec("ijb", hinted, "ijb")).meta["set"] == "ijbb"
    (hinted / "meta" / "ijbb_template_pair_label.txt").write_text("10 20 0\n10 99 1\n")
    with pytest.raises(DataError, match="template 99"):
        open_dataset(spec("ijb", hinted, "ijb"))
    (hinted / "meta" / "ijbb_template_pair_label.txt").write_text("10 20 0\n10 30 1\n")
    (hinted / "loose_crop" / "4.png").unlink()
    with pytest.raises(DataError, match="4.png"):
        open_dataset(spec("ijb", hinted, "ijb"))
    with pytest.raises(DataMissing):
        open_dataset(spec("ijb", tmp_path / "absent", "ijb"))
    empty = tmp_path / "empty"
    (empty / "meta").mkdir(parents=True)
    with pytest.raises(DataMissing, match="no complete IJB-B or IJB-C"):
        open_dataset(spec("ijb", empty, "ijb"))


def test_ijb_missing_landmarks(tmp_path):
    root = tmp_path / "IJBC"
    make_ijb(root)
    lm = root / "meta" / "ijbc_name_5pts_score.txt"
    lm.write_text("".join(l for l in lm.read_text().splitlines(True) if not l.startswith("3.png")))
    with pytest.raises(DataError, match="no landmark line for image 3.png"):
        open_dataset(spec("ijb", root, "ijb"))


# -------------------------------------------------------------------------- ijb: aggregation

def test_template_aggregation_hand_computed():
    # template 7: media 1 = images a, b; media 2 = image c.  template 9: media 5 = d, e.
    a, b, c = np.array([3.0, 4.0]), np.array([1.0, 0.0]), np.array([0.0, 2.0])
    d, e = np.array([1.0, 1.0]), np.array([-2.0, 0.0])
    x = np.stack([a, d, b, c, e])          # interleaved on purpose
    tid = np.array([7, 9, 7, 7, 9])
    mid = np.array([1, 5, 1, 2, 5])
    q = np.array([0.5, 1.0, 1.0, 0.25, 0.5])

    def unit(v):
        return v / np.linalg.norm(v)

    # keep norms, detector weights: media1 = (0.5a + b)/2 = (1.25, 1); media2 = 0.25c = (0, .5)
    t7 = unit(np.array([1.25, 1.5]))
    t9 = unit((1.0 * d + 0.5 * e) / 2)                         # (0, 0.5)
    templates, feats = template_features(x, tid, mid, q)
    assert templates.tolist() == [7, 9]
    np.testing.assert_allclose(feats, [t7, t9], atol=1e-6)
    # unit image norms, then weights: a/5 = (.6, .8)
    t7u = unit((0.5 * a / 5 + b) / 2 + 0.25 * c / 2)
    t9u = unit((d / math.sqrt(2) + 0.5 * e / 2) / 2)
    _, fu = template_features(x, tid, mid, q, image_norm="unit")
    np.testing.assert_allclose(fu, [t7u, t9u], atol=1e-6)
    # no detector weights
    _, fn = template_features(x, tid, mid, None, detector_score_weight=False)
    np.testing.assert_allclose(fn, [unit((a + b) / 2 + c), unit((d + e) / 2)], atol=1e-6)

    pairs = np.array([[7, 9], [9, 7], [7, 7]])
    s = pair_scores(templates, feats, pairs)
    np.testing.assert_allclose(s, [t7 @ t9, t7 @ t9, 1.0], atol=1e-6)
    metrics, details = ijb_protocol.evaluate(x, tid, mid, q, pairs, np.array([0, 0, 1]),
                                             fars=(0.5, 1.0))
    assert metrics == {"tar@far=5e-1": 1.0, "tar@far=1e0": 1.0}
    assert details["n_templates"] == 2 and details["n_genuine"] == 1
    with pytest.raises(ValueError, match="template 8"):
        pair_scores(templates, feats, np.array([[7, 8]]))


def naive_ijb_scores(x, tid, mid, q, pairs, weight=True, unit_norm=False):
    """Loop-by-loop reference of the InsightFace pipeline."""
    x = x.astype(np.float64)
    if unit_norm:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if weight:
        x = x * q[:, None]
    tf = {}
    for t in np.unique(tid):
        acc = np.zeros(x.shape[1])
        for m in np.unique(mid[tid == t]):
            acc += x[(tid == t) & (mid == m)].mean(axis=0)
        tf[t] = acc / np.linalg.norm(acc)
    return np.array([tf[a] @ tf[b] for a, b in pairs])


@pytest.mark.parametrize("unit_norm", [False, True])
def test_pair_scores_match_naive_reference(unit_norm):
    rng = np.random.default_rng(5)
    m, d, t = 400, 16, 40
    x = rng.normal(size=(m, d)).astype(np.float32)
    tid = rng.integers(0, t, m) * 3 + 100
    mid = rng.integers(0, 6, m)
    q = rng.uniform(0.1, 1.0, m)
    templates, feats = template_features(x, tid, mid, q,
                                         image_norm="unit" if unit_norm else "keep")
    pairs = templates[rng.integers(0, len(templates), (3000, 2))]
    ref = naive_ijb_scores(x, tid, mid, q, pairs, unit_norm=unit_norm)
    np.testing.assert_allclose(pair_scores(templates, feats, pairs), ref, atol=1e-5)
    rows = np.searchsorted(templates, pairs).astype(np.int32)
    for chunk in (1, 7, 10_000):
        g = _scores_by_group(feats, rows[:, 0], rows[:, 1], chunk)
        h = _scores_by_gather(feats, rows[:, 0], rows[:, 1], chunk)
        np.testing.assert_allclose(g, ref, atol=1e-5)
        np.testing.assert_allclose(h, ref, atol=1e-5)


# ----------------------------------------------------------------------------- ijb: TAR@FAR

def test_far_rules_differ():
    # genuine 0.9 0.5 0.4, impostor 0.6 0.3 0.2 0.1: FAR 0.2 target, N = 4 impostors
    scores = np.array([0.9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0, 0])
    at_most, d1 = tar_at_fars(scores, labels, (0.2,), "at-most")
    nearest, d2 = tar_at_fars(scores, labels, (0.2,), "insightface")
    assert at_most == {"tar@far=2e-1": pytest.approx(1 / 3)}
    assert d1["tar@far=2e-1"] == {"far": 0.0, "false_accepts": 0, "true_accepts": 1,
                                  "threshold": 0.9, "resolvable": False}
    assert nearest == {"tar@far=2e-1": 1.0}          # FAR 0.25 is nearer 0.2 than 0
    assert d2["tar@far=2e-1"]["far"] == 0.25 and d2["tar@far=2e-1"]["threshold"] == 0.4
    assert at_most["tar@far=2e-1"] == tar_at_far(scores, labels, 0.2)


def insightface_reading(scores, labels, far):
    """InsightFace's eval_ijbc reading, done with scikit-learn."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return tpr[int(np.argmin(np.abs(fpr - far)))]


score_sets = st.integers(min_value=3, max_value=80).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 12), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n)).filter(lambda t: 0 < sum(t[1]) < n))
FAR_GRID = (1e-3, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0)


@settings(max_examples=60, deadline=None)
@given(score_sets)
def test_tar_rules_match_references(data):
    s = np.array(data[0], dtype=np.float64)
    y = np.array(data[1])
    at_most, _ = tar_at_fars(s, y, FAR_GRID, "at-most")
    nearest, _ = tar_at_fars(s, y, FAR_GRID, "insightface")
    for f in FAR_GRID:
        assert at_most[far_key(f)] == tar_at_far(s, y, f)
        assert nearest[far_key(f)] == pytest.approx(insightface_reading(s, y, f), abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(score_sets, st.sampled_from(["at-most", "insightface"]))
def test_tar_non_decreasing_in_far(data, rule):
    s = np.array(data[0], dtype=np.float64)
    y = np.array(data[1])
    tars, _ = tar_at_fars(s, y, FAR_GRID, rule)
    values = [tars[far_key(f)] for f in FAR_GRID]
    assert all(a <= b for a, b in zip(values, values[1:]))


@settings(max_examples=60, deadline=None)
@given(score_sets, st.sampled_from(["at-most", "insightface"]),
       st.sampled_from(["affine", "exp", "cube"]))
def test_tar_invariant_to_increasing_transforms(data, rule, how):
    s = np.array(data[0], dtype=np.float64)
    y = np.array(data[1])
    t = {"affine": 3.5 * s - 7.0, "exp": np.exp(s / 3.0), "cube": (s - 6.0) ** 3}[how]
    a, _ = tar_at_fars(s, y, FAR_GRID, rule)
    b, _ = tar_at_fars(t, y, FAR_GRID, rule)
    assert a == b


def test_ijb_evaluate_keys_and_plain_floats():
    rng = np.random.default_rng(2)
    m, d = 300, 8
    centres = rng.normal(size=(30, d))
    tid = np.arange(m) // 3            # 100 templates of 3 images, one identity each
    ident_t = rng.integers(0, 30, 100)
    x = (centres[np.repeat(ident_t, 3)] + 0.8 * rng.normal(size=(m, d))).astype(np.float32)
    mid = np.arange(m)
    pairs = np.array([(i, j) for i in range(100) for j in range(i + 1, 100)])
    labels = (ident_t[pairs[:, 0]] == ident_t[pairs[:, 1]]).astype(int)
    metrics, details = ijb_protocol.evaluate(x, tid, mid, rng.uniform(0.5, 1, m), pairs, labels)
    assert list(metrics) == [f"tar@far=1e-{k}" for k in range(6, 0, -1)]
    assert all(type(v) is float and 0 <= v <= 1 for v in metrics.values())
    assert metrics["tar@far=1e-1"] > 0.5
    assert details["tar@far=1e-1"]["far"] <= 0.1
    assert details["tar@far=1e-6"]["resolvable"] is False
    m2, d2 = ijb_protocol.evaluate(x, tid, mid, None, pairs, labels, far_rule="insightface",
                                   detector_score_weight=False, image_norm="unit")
    assert d2["far_rule"] == "insightface" and set(m2) == set(metrics)


# ------------------------------------------------------------------------------ verification

def test_verification_evaluate():
    rng = np.random.default_rng(0)
    n, d = 2400, 32
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 4)
    a = rng.normal(size=(n, d))
    b = np.where(same[:, None], a + 0.9 * rng.normal(size=(n, d)), rng.normal(size=(n, d)))
    emb = np.empty((2 * n, d))
    emb[0::2], emb[1::2] = a, b
    out = verification_protocol.evaluate(emb, same, n_folds=10).metrics
    assert set(out) == {"accuracy", "accuracy_std", "tar@far=1e-3"}
    assert all(type(v) is float for v in out.values())
    mean, std = verification_accuracy(a, b, same, 10)
    assert out["accuracy"] == mean and out["accuracy_std"] == std
    assert 0.9 < out["accuracy"] < 1.0
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert out["tar@far=1e-3"] == tar_at_far(cos, same, 1e-3)

    # a separable set: perfect accuracy; too few impostor pairs: no TAR@FAR=1e-3
    small = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    base = rng.normal(size=(100, d))
    emb2 = np.empty((200, d))
    emb2[0::2] = base
    emb2[1::2] = np.where(small[:, None], base, -base)
    out2 = verification_protocol.evaluate(emb2, small, n_folds=5).metrics
    assert out2 == {"accuracy": 1.0, "accuracy_std": 0.0}
    with pytest.raises(ValueError, match="2N"):
        verification_protocol.evaluate(emb2[:-1], small)
