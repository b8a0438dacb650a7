"""The feature stage's one-pass extraction for several models."""

import numpy as np
import torch
from PIL import Image

from harness.data.base import Split
from harness.features import extract
from harness.models.preprocess import Preprocess
from harness.features import Need, extract_many


class Linear:
    """A fixed random linear map of the flattened image: distinct per seed."""

    def __init__(self, seed, size=8, interpolation="bilinear"):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(3 * size * size, 5, generator=g)
        self.id = f"lin{seed}"
        self.device = "cpu"
        self.fingerprint = f"lin{seed}"
        self.preprocess = Preprocess(size=size, interpolation=interpolation,
                                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize="squash")

    def encode_image(self, x):
        return x.flatten(1) @ self.w


class CountingSplit(Split):
    def load(self, i):
        self.meta["decodes"] = self.meta.get("decodes", 0) + 1
        return super().load(i)


def make_split(tmp_path, n=10, bad=()):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        if i in bad:
            p.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, size=(12, 9, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return CountingSplit("test", paths, np.arange(n) % 3, {})


def test_each_model_equals_its_own_extraction_bit_for_bit(tmp_path):
    split = make_split(tmp_path, bad=(3,))
    models = [Linear(0), Linear(1), Linear(2, size=6, interpolation="bicubic")]
    needs = [Need(models[0]), Need(models[1], flip=True), Need(models[2])]
    many = extract_many(needs, split, batch_size=4, num_workers=0)
    for n, f in zip(needs, many):
        alone = extract(n.model, split, flip=n.flip, batch_size=4, num_workers=0)
        assert np.array_equal(f.x, alone.x)
        assert np.array_equal(f.valid, alone.valid)
        assert f.bad_items == alone.bad_items == [split.items[3]]
    assert many[0].loader["distinct_preprocessing"] == 2


def test_each_image_is_decoded_once_for_all_models(tmp_path):
    split = make_split(tmp_path)
    needs = [Need(Linear(s)) for s in range(4)]
    split.meta["decodes"] = 0
    extract_many(needs, split, batch_size=3, num_workers=0)
    assert split.meta["decodes"] == len(split)
    split.meta["decodes"] = 0
    for n in needs:
        extract(n.model, split, batch_size=3, num_workers=0)
    assert split.meta["decodes"] == 4 * len(split)


def test_no_needs_gives_nothing(tmp_path):
    assert extract_many([], make_split(tmp_path)) == []


def test_plan_groups_models_dataset_major():
    from harness.stage import Group, plan

    needs = {"zeroshot": [("d1", "test", False)], "linear_probe": [("d1", "train", False),
                                                                   ("d1", "test", False)],
             "verification": [("d2", "test", True), ("d2", "test", False)]}
    cases = [("zeroshot", "b", "d1"), ("linear_probe", "a", "d1"), ("zeroshot", "a", "d1"),
             ("verification", "b", "d2")]
    groups = plan(cases, lambda p, m, d: needs[p], ["d2", "d1"], ["a", "b"])
    assert groups == [Group("d2", "test", False, ("b",)), Group("d2", "test", True, ("b",)),
                      Group("d1", "train", False, ("a",)), Group("d1", "test", False, ("a", "b"))]


def test_cache_many_resumes_each_model_from_its_own_chunks(tmp_path):
    from harness.features import FeatureCache

    split = make_split(tmp_path, n=10)
    models = [Linear(0), Linear(1)]
    cache = FeatureCache(tmp_path / "c", chunk_rows=4)
    ref = [extract(m, split, batch_size=2, num_workers=0) for m in models]
    # model 0 alone first: its entry is complete; then both: only model 1 is extracted
    cache.features(models[0], split, batch_size=2, num_workers=0)
    split.meta["decodes"] = 0
    got = cache.features_many([(models[0], False), (models[1], False)], split, batch_size=2,
                              num_workers=0)
    assert split.meta["decodes"] == len(split)  # one pass, for model 1 only
    assert got[0].from_cache and not got[1].from_cache
    for r, g in zip(ref, got):
        assert np.array_equal(np.asarray(g.x), r.x)
    # a fresh cache object reads both back without decoding
    split.meta["decodes"] = 0
    again = FeatureCache(tmp_path / "c").features_many([(m, False) for m in models], split)
    assert split.meta["decodes"] == 0 and all(f.from_cache for f in again)
