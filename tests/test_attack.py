"""The mad / pad protocols (harness.protocols.attack) and their formats (harness.data.attack_list)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from harness import metrics as M
from harness.data import attack_list as AL
from harness.data.registry import _FORMATS
from harness.errors import DataError, DataMissing
from harness.protocols import attack as A
from harness.protocols import lower_is_better
from harness.suite import DatasetSpec

POINTS = ("0.01", "0.05", "0.1", "0.2")
PAD_KEYS = {"eer", "auc", "hter", "apcer", "apcer_pooled", "bpcer", "acer"} \
    | {f"bpcer@apcer={x}" for x in POINTS} | {f"apcer@bpcer={x}" for x in POINTS}


# --------------------------------------------------------------------------------------- PAD

# bona fide 0.7, 0.4; print 0.6; replay 0.5, 0.2
PS = np.array([0.7, 0.4, 0.6, 0.5, 0.2])
PY = np.array([1, 1, 0, 0, 0])
PT = np.array(["", "", "print", "replay", "replay"])


def test_pad_fixed_threshold_hand_computed():
    res = A.evaluate_pad(PS, PY, PT, threshold=0.5)
    m = res.metrics
    assert set(m) == PAD_KEYS | {"apcer[print]", "apcer[replay]"}
    assert m["bpcer"] == 0.5                 # 0.4 rejected
    assert m["apcer[print]"] == 1.0          # 0.6 accepted
    assert m["apcer[replay]"] == 0.5         # 0.5 tied with t: accepted
    assert m["apcer"] == 1.0
    assert m["apcer_pooled"] == 2 / 3
    assert m["acer"] == 0.75
    assert m["hter"] == pytest.approx(7 / 12, abs=1e-15)
    assert res.details["threshold"] == 0.5
    assert res.details["threshold_source"] == "fixed"
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in m.values())
    assert all(lower_is_better(k) for k in m if k != "auc")


def test_pad_threshold_sources():
    # dev set: bona fide 0.9, 0.5; attack 0.5, 0.1 -> EER threshold 0.5
    dev_s, dev_y = [0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]
    dev = A.evaluate_pad(PS, PY, PT, threshold="dev-eer", dev_scores=dev_s, dev_labels=dev_y)
    fixed = A.evaluate_pad(PS, PY, PT, threshold=0.5)
    assert dev.details["threshold"] == 0.5 and dev.details["threshold_source"] == "dev-eer"
    assert dev.metrics == fixed.metrics
    test = A.evaluate_pad(PS, PY, PT)                  # default: test-eer
    assert test.details["threshold_source"] == "test-eer"
    assert test.details["threshold"] == M.eer_threshold(PS, PY)
    assert test.metrics["hter"] == M.hter(PS, PY, test.details["threshold"])
    with pytest.raises(ValueError, match="dev-eer' needs dev_scores"):
        A.evaluate_pad(PS, PY, threshold="dev-eer")
    with pytest.raises(ValueError, match="threshold must be"):
        A.evaluate_pad(PS, PY, threshold="eer")
    with pytest.raises(ValueError, match="threshold must be"):
        A.evaluate_pad(PS, PY, threshold=True)


def test_pad_without_types_pools():
    m = A.evaluate_pad(PS, PY, threshold=0.5).metrics
    assert set(m) == PAD_KEYS
    assert m["apcer"] == m["apcer_pooled"] == 2 / 3


def test_video_average_hand_computed():
    scores = [0.9, 0.7, 0.2, 0.4, 0.6, 0.5]
    labels = [1, 1, 0, 0, 0, 1]
    types = ["", "", "print", "print", "replay", ""]
    vids = ["v1", "v1", "v2", "v2", "v3", ""]          # "" = a sample on its own
    res = A.evaluate_pad(scores, labels, types, vids, threshold=0.55)
    # videos: v1 bona 0.8, v2 print 0.3, v3 replay 0.6, lone bona 0.5
    assert res.metrics["bpcer"] == 0.5 and res.metrics["apcer_pooled"] == 0.5
    assert res.details["n_samples"] == 6 and res.details["n_scored"] == 4
    frames = A.evaluate_pad(scores, labels, types, vids, threshold=0.55, video_average=False)
    assert frames.metrics["bpcer"] == 1 / 3 and frames.metrics["apcer_pooled"] == 1 / 3
    s, y, t, ids = A.average_per_video(scores, labels, vids, types)
    assert s.tolist() == pytest.approx([0.8, 0.3, 0.6, 0.5])
    assert y.tolist() == [1, 0, 0, 1] and t.tolist() == ["", "print", "replay", ""]
    assert ids.tolist() == ["v1", "v2", "v3", ""]


def test_video_average_rejects_disagreeing_frames():
    with pytest.raises(DataError, match="video 'v1' mixes bona fide and attack frames"):
        A.evaluate_pad([0.1, 0.2, 0.3], [1, 0, 0], None, ["v1", "v1", "v2"])
    with pytest.raises(DataError, match="video 'v2' mixes attack types"):
        A.evaluate_pad([0.1, 0.2, 0.3], [1, 0, 0], ["", "print", "replay"], ["v1", "v2", "v2"])
    with pytest.raises(ValueError, match="length mismatch"):
        A.evaluate_pad([0.1, 0.2, 0.3], [1, 0, 0], None, ["v1"])


# --------------------------------------------------------------------------------------- MAD

# bona fide 0.9, 0.8, 0.3; method A 0.2, 0.1 (separated); method B 0.85, 0.4
MS = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.85, 0.4])
MY = np.array([1, 1, 1, 0, 0, 0, 0])
MT = np.array(["", "", "", "A", "A", "B", "B"])


def test_mad_per_method_and_average_hand_computed():
    res = A.evaluate_mad(MS, MY, MT)
    m = res.metrics
    base = PAD_KEYS - {"apcer_pooled"}
    assert set(m) == base | {f"{k}[{x}]" for k in base for x in ("A", "B")}
    assert m["eer[A]"] == 0.0
    assert m["eer[B]"] == 0.5          # crossing halfway between (FAR .5, FRR 2/3) and (.5, 1/3)
    assert m["eer"] == 0.25
    assert m["auc[A]"] == 1.0 and m["auc[B]"] == 0.5 and m["auc"] == 0.75
    # test-eer thresholds per method: A exactly at 0.3 (FAR = FRR = 0); B ties -> lower, 0.8
    assert res.details["thresholds"] == {"A": 0.3, "B": 0.8}
    assert res.details["threshold"] is None and res.details["methods"] == ["A", "B"]
    assert m["hter[A]"] == 0.0 and m["hter[B]"] == pytest.approx(5 / 12)
    assert m["hter"] == pytest.approx(5 / 24)
    for k in base:
        assert m[k] == pytest.approx((m[f"{k}[A]"] + m[f"{k}[B]"]) / 2, abs=1e-15)
    assert all(lower_is_better(k) for k in m if not k.startswith("auc"))


def test_mad_fixed_threshold_and_dispatch():
    res = A.evaluate("mad", MS, MY, MT, threshold=0.5)
    assert res.details["threshold"] == 0.5
    assert res.details["thresholds"] == {"A": 0.5, "B": 0.5}
    assert res.metrics["apcer[B]"] == 0.5 and res.metrics["apcer[A]"] == 0.0
    assert res.metrics["bpcer"] == 1 / 3
    with pytest.raises(ValueError, match="MAD needs attack_types"):
        A.evaluate_mad(MS, MY, None)
    with pytest.raises(ValueError, match="protocol must be"):
        A.evaluate("zeroshot", MS, MY)


# ----------------------------------------------------------------------------------- scoring

def test_text_scores_hand_computed():
    img = np.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    bona = np.array([[1.0, 0.0, 0.0], [10.0, 0.0, 0.0]])   # prompt norms do not matter
    attack = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # class vector (0, .707, .707)
    z = A.text_scores(img, bona, attack, logit=True)
    r = np.sqrt(0.5)
    np.testing.assert_allclose(z, [100 * (0 - r), 100 * (1 - 0), 100 * (0.6 - 0.8 * r)])
    p = A.text_scores(img, bona, attack)
    logits = 100 * np.stack([img / np.linalg.norm(img, axis=1, keepdims=True) @ [1, 0, 0],
                             img / np.linalg.norm(img, axis=1, keepdims=True) @ [0, r, r]], 1)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, soft[:, 0] / soft.sum(1), rtol=1e-12, atol=1e-300)
    assert A.text_scores(img, bona[0], attack).shape == (3,)
    with pytest.raises(ValueError, match="attack_text_emb must be"):
        A.text_scores(img, bona, np.ones((2, 4)))


def test_probe_scores():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5))
    y = (x[:, 0] + 0.1 * rng.normal(size=80) > 0).astype(int)
    xt = rng.normal(size=(40, 5))
    yt = (xt[:, 0] > 0).astype(int)
    p = A.probe_scores(x, y, xt)
    assert p.shape == (40,) and np.all((p >= 0) & (p <= 1))
    assert M.roc_auc(p, yt) > 0.95
    np.testing.assert_array_equal(p, A.probe_scores(x, y, xt))   # deterministic
    with pytest.raises(ValueError, match="only one class present in train_y"):
        A.probe_scores(x, np.ones(80), xt)
    with pytest.raises(ValueError, match="feature size mismatch"):
        A.probe_scores(x, y, xt[:, :3])


# ----------------------------------------------------------------------------------- formats

def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


def _spec(root, fmt="list", dtype="pad", **options):
    return DatasetSpec(id="ds", type=dtype, format=fmt, root=str(root), source="suite.toml",
                       protocols=(dtype,), options=options)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


LIST_CSV = ("path,label,attack_type,video_id,subject_id\n"
            "live/a.png,bonafide,,v1,s1\n"
            "live/b.png,BonaFide,,v1,s1\n"
            "print/c.png,attack,print,v2,\n"
            "\n"
            "replay/d.png,attack,replay,,s2\n")


def _list_tree(tmp_path):
    for p in ("live/a.png", "live/b.png", "print/c.png", "replay/d.png"):
        _png(tmp_path / p)


def test_formats_registered():
    assert _FORMATS["list"][1] == ("mad", "pad")
    assert _FORMATS["mad-folders"][1] == ("mad", "pad")


def test_list_single_csv_is_the_test_split(tmp_path):
    _list_tree(tmp_path)
    csv = _write(tmp_path / "all.csv", LIST_CSV)
    ds = AL.open_list(_spec(csv))
    assert list(ds.splits) == ["test"] and ds.id == "ds"
    sp = ds.split("test")
    assert sp.items == [str(tmp_path / p) for p in ("live/a.png", "live/b.png", "print/c.png",
                                                    "replay/d.png")]
    assert sp.labels.dtype.kind == "i" and sp.labels.tolist() == [1, 1, 0, 0]
    assert sp.meta["attack_type"].tolist() == ["", "", "print", "replay"]
    assert sp.meta["video_id"].tolist() == ["v1", "v1", "v2", ""]
    assert sp.meta["subject_id"].tolist() == ["s1", "s1", "", "s2"]
    assert sp.load(2).size == (4, 4)
    assert ds.meta["attack_types"] == ["print", "replay"]


def test_list_folder_with_splits_and_minimal_header(tmp_path):
    _list_tree(tmp_path)
    _write(tmp_path / "test.csv", LIST_CSV)
    _write(tmp_path / "train.csv", "attack_type,path,label\nprint,print/c.png,attack\n,live/a.png,bonafide\n")
    ds = AL.open_list(_spec(tmp_path))
    assert sorted(ds.splits) == ["test", "train"]
    tr = ds.split("train")
    assert tr.labels.tolist() == [0, 1]
    assert set(tr.meta) == {"attack_type"}           # optional columns absent


@pytest.mark.parametrize("rows, msg", [
    ("live/a.png,real,,v,s\n", r"line 2: unknown label 'real'; expected 'bonafide' or 'attack'"),
    ("live/a.png,bonafide,print,v,s\n", r"line 2: bona fide row has attack_type 'print'"),
    ("live/a.png,bonafide,,v,s\nprint/c.png,attack,,v,s\n", r"line 3: attack row has no attack_type"),
    ("live/a.png,bonafide,,v,s\nprint/zz.png,attack,print,v,s\n", r"line 3: image .*zz.png' does not exist"),
    ("live/a.png,bonafide,,v\n", r"line 2: 4 fields, the header has 5"),
    ("live/a.png,bonafide,,v,s\n", r"split 'test' has no attack samples"),
    ("print/c.png,attack,print,v,s\n", r"split 'test' has no bona fide samples"),
])
def test_list_bad_rows(tmp_path, rows, msg):
    _list_tree(tmp_path)
    csv = _write(tmp_path / "test.csv", "path,label,attack_type,video_id,subject_id\n" + rows)
    with pytest.raises(DataError, match=msg) as e:
        AL.open_list(_spec(tmp_path))
    assert str(e.value).startswith(str(csv)) and "\n" not in str(e.value)


def test_list_bad_header(tmp_path):
    _write(tmp_path / "x.csv", "path,label,attack_type,camera\n")
    with pytest.raises(DataError, match=r"x.csv: line 1: unknown column 'camera'"):
        AL.open_list(_spec(tmp_path / "x.csv"))
    _write(tmp_path / "y.csv", "path,label\n")
    with pytest.raises(DataError, match=r"y.csv: line 1: missing column 'attack_type'"):
        AL.open_list(_spec(tmp_path / "y.csv"))
    _write(tmp_path / "z.csv", "")
    with pytest.raises(DataError, match=r"z.csv: empty file"):
        AL.open_list(_spec(tmp_path / "z.csv"))


def test_list_missing_root(tmp_path):
    with pytest.raises(DataMissing, match=r"nope: not found .*test.csv"):
        AL.open_list(_spec(tmp_path / "nope"))
    with pytest.raises(DataMissing, match=r"no test.csv in the dataset folder"):
        AL.open_list(_spec(tmp_path))


def _mad_tree(root, prefix=""):
    for p in ("bonafide/1.png", "bonafide/sub/2.jpg", "bonafide/notes.txt", "FaceMorpher/1.png",
              "MIPGAN-I/1.png", "MIPGAN-I/2.png", ".hidden/1.png"):
        if p.endswith(".txt"):
            _write(root / prefix / p, "x")
        else:
            _png(root / prefix / p)


def test_mad_folders(tmp_path):
    _mad_tree(tmp_path)
    _mad_tree(tmp_path, "train")
    ds = AL.open_mad_folders(_spec(tmp_path, "mad-folders", "mad"))
    assert sorted(ds.splits) == ["test", "train"]
    sp = ds.split("test")
    assert sp.labels.tolist() == [1, 1, 0, 0, 0]
    assert sp.meta["attack_type"].tolist() == ["", "", "FaceMorpher", "MIPGAN-I", "MIPGAN-I"]
    assert sp.items[1] == str(tmp_path / "bonafide/sub/2.jpg")
    assert all("train" not in p for p in sp.items)
    assert ds.split("train").items[0] == str(tmp_path / "train/bonafide/1.png")
    assert ds.meta["attack_types"] == ["FaceMorpher", "MIPGAN-I"]
    assert sp.load(0).mode == "RGB"


def test_mad_folders_errors(tmp_path):
    with pytest.raises(DataMissing, match=r"missing: not found .*root/bonafide/\*"):
        AL.open_mad_folders(_spec(tmp_path / "missing", "mad-folders", "mad"))
    _png(tmp_path / "a/FaceMorpher/1.png")
    with pytest.raises(DataError, match=r"a: no bonafide/ folder for split 'test'"):
        AL.open_mad_folders(_spec(tmp_path / "a", "mad-folders", "mad"))
    _png(tmp_path / "b/bonafide/1.png")
    with pytest.raises(DataError, match=r"b: split 'test' has no attack samples"):
        AL.open_mad_folders(_spec(tmp_path / "b", "mad-folders", "mad"))
    _png(tmp_path / "c/bonafide/1.png")
    (tmp_path / "c/OpenCV").mkdir()
    with pytest.raises(DataError, match=r"OpenCV: morphing-method folder holds no images"):
        AL.open_mad_folders(_spec(tmp_path / "c", "mad-folders", "mad"))
    (tmp_path / "d/bonafide").mkdir(parents=True)
    _png(tmp_path / "d/OpenCV/1.png")
    with pytest.raises(DataError, match=r"bonafide: split 'test' has no bona fide samples"):
        AL.open_mad_folders(_spec(tmp_path / "d", "mad-folders", "mad"))


def test_list_dataset_through_the_pad_protocol(tmp_path):
    """End to end on arrays: a list dataset's labels/meta feed evaluate_pad directly."""
    _list_tree(tmp_path)
    sp = AL.open_list(_spec(_write(tmp_path / "l.csv", LIST_CSV))).split("test")
    scores = np.array([0.9, 0.7, 0.8, 0.1])          # stands in for a model's P(bona fide)
    res = A.evaluate_pad(scores, sp.labels, sp.meta["attack_type"], sp.meta["video_id"],
                         threshold=0.75)
    # v1 = mean(0.9, 0.7) = 0.8 accepted; v2 (print) 0.8 accepted; lone replay 0.1 rejected
    assert res.metrics["bpcer"] == 0.0 and res.metrics["apcer"] == 1.0
    assert res.metrics["apcer_pooled"] == 0.5 and res.details["n_scored"] == 3


# ------------------------------------------------- list paths: containment, file kinds, video ids

def test_list_paths_must_stay_inside_the_csv_folder(tmp_path):
    outside = tmp_path / "outside.png"
    _png(outside)
    ds_dir = tmp_path / "ds"
    _list_tree(ds_dir)
    (ds_dir / "live" / "link.png").symlink_to(outside)
    for rel in ("../outside.png", str(outside), "live/link.png"):
        csv = _write(ds_dir / "test.csv", "path,label,attack_type\nlive/a.png,bonafide,\n"
                     f"{rel},attack,print\n")
        with pytest.raises(DataError) as e:
            AL.open_list(_spec(ds_dir))
        msg = str(e.value)
        assert msg.startswith(f"{csv}: line 3: path {rel!r} resolves outside") and "\n" not in msg
        assert "allow_outside_root = true" in msg
        sp = AL.open_list(_spec(ds_dir, allow_outside_root=True)).split("test")
        assert os.path.realpath(sp.items[1]) == str(outside)


def test_list_dev_zero_and_fifo_are_not_regular_files(tmp_path):
    _list_tree(tmp_path)
    os.mkfifo(tmp_path / "live" / "fifo.png")
    cases = [("live/fifo.png", {}, "(a FIFO)"), ("/dev/zero", {"allow_outside_root": True},
                                                 "(a character device)")]
    for rel, opts, kind in cases:
        _write(tmp_path / "test.csv", f"path,label,attack_type\nlive/a.png,bonafide,\n{rel},attack,x\n")
        with pytest.raises(DataError, match=r"line 3: image .* not a regular file") as e:
            AL.open_list(_spec(tmp_path, **opts))
        assert kind in str(e.value) and "does not exist" not in str(e.value)


def test_video_id_pattern_list_and_folders(tmp_path):
    for p in ("live/v1/f1.png", "live/v1/f2.png", "print/v2/f1.png", "replay/v3/f9.png"):
        _png(tmp_path / p)
    _write(tmp_path / "test.csv", "path,label,attack_type\nlive/v1/f1.png,bonafide,\n"
           "live/v1/f2.png,bonafide,\nprint/v2/f1.png,attack,print\nreplay/v3/f9.png,attack,replay\n")
    pat = r"^[a-z]+/(v\d+)/"
    sp = AL.open_list(_spec(tmp_path, video_id_pattern=pat)).split("test")
    assert sp.meta["video_id"].tolist() == ["v1", "v1", "v2", "v3"]
    # folders: the pattern sees the path relative to root (bonafide/..., <method>/...)
    root = tmp_path / "mf"
    for p in ("bonafide/a/1.png", "bonafide/a/2.png", "bonafide/b/1.png", "M1/c/1.png"):
        _png(root / p)
    sp = AL.open_mad_folders(_spec(root, "mad-folders", "mad", video_id_pattern=r"^\w+/(\w)/"),
                             index_dir=tmp_path / "idx").split("test")
    assert sp.meta["video_id"].tolist() == ["a", "a", "b", "c"]
    _png(root / "M1" / "stray.png")
    with pytest.raises(DataError, match=r"path 'M1/stray.png' does not match video_id_pattern"):
        AL.open_mad_folders(_spec(root, "mad-folders", "mad", video_id_pattern=r"^\w+/(\w)/"),
                            index_dir=tmp_path / "idx")
    with pytest.raises(DataError, match=r"has 2 groups; expected exactly one"):
        AL.open_list(_spec(tmp_path, video_id_pattern=r"(a)(b)"))
    _write(tmp_path / "test.csv", LIST_CSV)
    _list_tree(tmp_path)
    with pytest.raises(DataError, match=r"video_id column and video_id_pattern are both given"):
        AL.open_list(_spec(tmp_path, video_id_pattern=pat))
