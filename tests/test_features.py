"""Feature extraction and the content-addressed cache."""

import os
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data.base import Split
from harness.errors import DataError
from harness.features import FeatureCache, check_unreadable, extract, feature_key
from harness.models.preprocess import Preprocess


class PixelModel:
    """Features = the mean of each channel over four image quadrants (12-d), computed by hand."""

    def __init__(self, fingerprint="m1", size=8):
        self.id = "pixel"
        self.device = "cpu"
        self.fingerprint = fingerprint
        self.preprocess = Preprocess(size=size, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                                     std=(1.0, 1.0, 1.0), resize="squash")
        self.calls = 0

    def encode_image(self, x):
        self.calls += 1
        h = x.shape[-1] // 2
        q = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
        return torch.cat([t.mean(dim=(-1, -2)) for t in q], dim=1)


def make_split(tmp_path, n=6, name="test"):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return Split(name, paths, np.arange(n) % 2)


def test_extract_matches_hand_computation_and_flip(tmp_path):
    split = make_split(tmp_path)
    model = PixelModel()
    f = extract(model, split, batch_size=4, num_workers=0)
    img = np.asarray(Image.open(split.items[0]), dtype=np.float32) / 255.0
    expected = np.concatenate([img[:4, :4].mean((0, 1)), img[:4, 4:].mean((0, 1)),
                               img[4:, :4].mean((0, 1)), img[4:, 4:].mean((0, 1))])
    np.testing.assert_allclose(f.x[0], expected, atol=1e-6)
    assert f.valid.all() and f.x.shape == (6, 12)
    ff = extract(model, split, flip=True, batch_size=4, num_workers=0)
    flipped = img[:, ::-1]
    exp_flip = np.concatenate([flipped[:4, :4].mean((0, 1)), flipped[:4, 4:].mean((0, 1)),
                               flipped[4:, :4].mean((0, 1)), flipped[4:, 4:].mean((0, 1))])
    np.testing.assert_allclose(ff.x[0], expected + exp_flip, atol=1e-6)


def test_worker_processes_give_the_same_features(tmp_path):
    split = make_split(tmp_path, n=10)
    a = extract(PixelModel(), split, batch_size=3, num_workers=0)
    b = extract(PixelModel(), split, batch_size=3, num_workers=2)
    np.testing.assert_array_equal(a.x, b.x)


def test_key_changes_with_every_input_and_not_otherwise(tmp_path):
    split = make_split(tmp_path)
    m = PixelModel()
    base = feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), "test", False)
    assert base == feature_key(m.fingerprint, m.preprocess.fingerprint,  # same files, new object
                               Split("test", list(split.items), split.labels).fingerprint(), "test", False)
    changed = {
        "weights": feature_key("m2", m.preprocess.fingerprint, split.fingerprint(), "test", False),
        "preprocess": feature_key(m.fingerprint, replace(m.preprocess, channel_order="bgr").fingerprint,
                                  split.fingerprint(), "test", False),
        "split": feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), "train", False),
        "flip": feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), "test", True),
    }
    # a file's modification time, size or the file list
    os.utime(split.items[0], ns=(1, 1))
    changed["mtime"] = feature_key(m.fingerprint, m.preprocess.fingerprint,
                                   Split("test", split.items, split.labels).fingerprint(), "test", False)
    changed["files"] = feature_key(m.fingerprint, m.preprocess.fingerprint,
                                   Split("test", split.items[:-1], split.labels[:-1]).fingerprint(), "test", False)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(split.items[1])
    changed["size"] = feature_key(m.fingerprint, m.preprocess.fingerprint,
                                  Split("test", split.items, split.labels).fingerprint(), "test", False)
    for k, v in changed.items():
        assert v != base, k
    assert len(set(changed.values())) == len(changed)


def test_second_run_reads_instead_of_extracting(tmp_path):
    split = make_split(tmp_path)
    m = PixelModel()
    c1 = FeatureCache(tmp_path / "cache")
    f1 = c1.features(m, split, num_workers=0)
    assert c1.extractions == 1 and not f1.from_cache and m.calls > 0
    calls = m.calls
    c2 = FeatureCache(tmp_path / "cache")  # a new process, the same folder
    f2 = c2.features(m, split, num_workers=0)
    assert c2.extractions == 0 and f2.from_cache and m.calls == calls
    np.testing.assert_array_equal(f1.x, f2.x)
    c3 = FeatureCache(tmp_path / "cache", refresh=True)
    c3.features(m, split, num_workers=0)
    c3.features(m, split, num_workers=0)  # refreshed once per run, not per call
    assert c3.extractions == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_concurrent_extraction_of_one_entry_happens_once(tmp_path):
    split = make_split(tmp_path)
    caches = [FeatureCache(tmp_path / "cache") for _ in range(4)]
    threads = [threading.Thread(target=c.features, args=(PixelModel(), split), kwargs={"num_workers": 0})
               for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c.extractions for c in caches) == 1


def test_unreadable_images_are_counted_and_over_one_percent_fail(tmp_path):
    split = make_split(tmp_path, n=4)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    f = extract(PixelModel(), split, num_workers=0)
    assert f.skipped == 1 and f.bad_items == [str(tmp_path / "img2.png")]
    assert not f.x[2].any()
    kept = f.dropping_unreadable()
    assert len(kept) == 3 and list(kept.labels) == [0, 1, 1]
    with pytest.raises(DataError, match=r"1 of 4 images unreadable .*img2.png"):
        check_unreadable(f, "demo/test")
    with pytest.raises(DataError, match="pair protocols cannot skip images"):
        f.require_all_readable("faces/test")


def test_cpu_loader_plan():
    from harness.features import plan_cpu_loader

    # decoder-bound (tiny model): every core decodes, the model gets one thread
    assert plan_cpu_loader(decode_seconds=8e-4, forward_seconds=1e-5, cpus=2) == (2, 1)
    # model-bound (ViT at 224 px): decoding in turn with the model beats stealing its cores
    assert plan_cpu_loader(decode_seconds=0.01, forward_seconds=0.1, cpus=2) == (0, 2)
    # many cores, balanced costs, worked by hand: in turn 1 / 0.005 = 200 img/s; w workers
    # decode 250 w img/s and 16 - w model threads run 62.5 (16 - w) img/s: w = 1: 250, w = 2:
    # 500, w = 3: 750 (= min(750, 812.5)), w = 4: 750 (= min(1000, 750)) is no 5 % gain, w >= 5
    # less: three workers, thirteen model threads
    assert plan_cpu_loader(decode_seconds=0.004, forward_seconds=0.001, cpus=16) == (3, 13)
    # one core: in turn 500 img/s; one worker + one thread 1000 img/s
    assert plan_cpu_loader(decode_seconds=0.001, forward_seconds=0.001, cpus=1) == (1, 1)
