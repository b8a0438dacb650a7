"""``--autocast bf16|fp16``: the option, the compute dtype a model reports, and the cache identity.

No CUDA here: the dtype rule (autocast on CUDA only) and the keys are checked; on the CPU the
embeddings must be bit-identical to fp32 whatever ``--autocast`` says.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
from PIL import Image

from harness.models import LoadedModel, load_model, open_model
from harness.models.loaded import autocast_name
from harness.suite import ModelSpec
from tests.tiny_clip import make_tiny_clip

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    d = make_tiny_clip(tmp_path_factory.mktemp("tiny") / "clip")
    return ModelSpec(id="tiny", arch=f"local-dir:{d}", source="s.toml")


@pytest.mark.parametrize("autocast,device,dtype", [
    (None, "cuda", "fp32"), (False, "cuda", "fp32"), (True, "cuda", "bf16"), ("bf16", "cuda:1", "bf16"),
    ("fp16", "cuda", "fp16"), ("fp16", "cpu", "fp32"), ("bf16", "cpu", "fp32"), ("fp16", "mps", "fp32"),
])
def test_compute_dtype(tiny_spec, autocast, device, dtype):
    m = LoadedModel(tiny_spec, None, None, None, device, "w" * 24, autocast=autocast)
    assert m.compute_dtype == dtype
    # fp32 keys stay the weights' fingerprint (caches written before this option stay valid)
    assert (m.fingerprint == "w" * 24) == (dtype == "fp32")
    assert m.weights_fingerprint == "w" * 24


def test_fingerprint_differs_per_dtype(tiny_spec):
    fps = {LoadedModel(tiny_spec, None, None, None, "cuda", "abc", autocast=a).fingerprint
           for a in (None, "bf16", "fp16")}
    assert len(fps) == 3


def test_unknown_autocast_name():
    with pytest.raises(ValueError, match="bf16, fp16"):
        autocast_name("fp8")


def test_cpu_runs_fp32_whatever_autocast_says(tiny_spec, tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    outs = {}
    for a in (None, "bf16", "fp16"):
        m = load_model(tiny_spec, "cpu", a)
        x = m.preprocess.transform()(img)[None]
        outs[a] = (m.encode_image(x), m.encode_text(["a photo"]))
        assert m.compute_dtype == "fp32" and outs[a][0].dtype == torch.float32
    for a in ("bf16", "fp16"):
        assert torch.equal(outs[a][0], outs[None][0]) and torch.equal(outs[a][1], outs[None][1])


def test_open_model_keeps_autocast_through_the_description_cache(tiny_spec, tmp_path):
    first = open_model(tiny_spec, "cpu", "fp16", tmp_path)    # builds, writes the description
    lazy = open_model(tiny_spec, "cpu", "fp16", tmp_path)     # from the description: not built
    assert first.is_built and not lazy.is_built
    assert first.autocast == lazy.autocast == "fp16" and lazy.compute_dtype == "fp32"
    assert lazy.model is not None and lazy.autocast == "fp16"


@pytest.mark.parametrize("args,value", [([], None), (["--autocast"], "bf16"),
                                        (["--autocast=fp16"], "fp16"), (["--autocast", "bf16"], "bf16")])
def test_option_values(pytester, args, value):
    assert pytester.parseconfig(*args).getoption("--autocast") == value


def test_option_rejects_other_dtypes(pytester):
    with pytest.raises(pytest.UsageError):
        pytester.parseconfig("--autocast=fp32")
