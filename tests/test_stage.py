"""The feature stage's one-pass extraction for several models."""

import numpy as np
import torch
from PIL import Image

from harness.data.base import Split
from harness.features import extract
from harness.models.preprocess import Preprocess
from harness.stage import Need, extract_many


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
