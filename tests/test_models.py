"""Model zoo: clip-lora and open_clip checkpoints, heads, safe loading, preprocessing.

The clip-lora checks build a tiny OpenAI-named CLIP with unmerged q/v LoRA here, in the test, and
compare the harness's (merged, open_clip) image embeddings with an independent forward pass that
applies the LoRA factors unmerged, written below with plain torch ops.
"""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from harness.errors import ModelError, UnsafePickleError  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.models.checkpoints import read_head, safe_load  # noqa: E402
from harness.models.clip_lora import convert_clip_lora_state_dict  # noqa: E402
from harness.models.loading import _create_plan  # noqa: E402
from harness.models.preprocess import (CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN,  # noqa: E402
                                       IMAGENET_STD, build_preprocess)
from harness.suite import ModelSpec, PreprocessSpec, parse_suite  # noqa: E402

WIDTH, LAYERS, HEADS, PATCH, SIZE, EMBED = 64, 2, 4, 8, 32, 16
RANK, ALPHA = 4, 3.0
TINY_CFG = {
    "embed_dim": EMBED,
    # no "quick_gelu": like open_clip's ViT-B-16.json, GELU unless something forces QuickGELU
    "vision_cfg": {"image_size": SIZE, "layers": LAYERS, "width": WIDTH, "patch_size": PATCH,
                   "head_width": WIDTH // HEADS},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only contend (seconds lost on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A local-dir: open_clip config (no weights) and one random state dict in open_clip names."""
    d = tmp_path_factory.mktemp("tiny")
    cfg_dir = d / "arch"
    cfg_dir.mkdir()
    (cfg_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG,
                                                                "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{cfg_dir}")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # open_clip zero-inits some biases; random values make every tensor count
    for k, v in sd.items():
        if k.endswith(".bias") or "ln_" in k:
            sd[k] = v + 0.05 * torch.randn_like(v)
    return {"dir": d, "arch": f"local-dir:{cfg_dir}", "sd": sd}


def to_clip_lora(sd: dict, rank: int = RANK, seed: int = 1) -> dict:
    """open_clip CLIP state dict -> the CLIP-LoRA layout (OpenAI names, unmerged q/v LoRA)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        m = k.startswith("visual.transformer.resblocks.") and ".attn." in k
        if not m:
            out[k] = v.clone()
            continue
        p = k[: k.index(".attn.") + len(".attn")]
        if k.endswith("in_proj_weight"):
            d = v.shape[1]
            for i, n in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{p}.{n}.weight"] = v[i * d:(i + 1) * d].clone()
            for n in ("q_proj", "v_proj"):
                out[f"{p}.{n}.w_lora_A"] = torch.randn(rank, d, generator=g) * 0.2
                out[f"{p}.{n}.w_lora_B"] = torch.randn(d, rank, generator=g) * 0.2
        elif k.endswith("in_proj_bias"):
            d = v.shape[0] // 3
            for i, n in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{p}.{n}.bias"] = v[i * d:(i + 1) * d].clone()
        elif ".out_proj." in k:
            out[k.replace(".out_proj.", ".proj.")] = v.clone()
        else:  # pragma: no cover
            raise AssertionError(k)
    return out


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def reference_encode_image(sd: dict, x, scale: float, act) -> "torch.Tensor":
    """Independent forward of the OpenAI-named ViT with LoRA applied unmerged (float64)."""
    sd = {k: v.double() for k, v in sd.items() if k.startswith("visual.")}
    x = x.double()

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)

    def lin(t, name, lora: bool):
        y = t @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
        if lora:
            y = y + scale * (t @ sd[f"{name}.w_lora_A"].T @ sd[f"{name}.w_lora_B"].T)
        return y

    t = F.conv2d(x, sd["visual.conv1.weight"], stride=PATCH)          # [B, W, g, g]
    b, w = t.shape[:2]
    t = t.reshape(b, w, -1).transpose(1, 2)                            # [B, g*g, W]
    cls = sd["visual.class_embedding"].reshape(1, 1, w).expand(b, 1, w)
    t = torch.cat([cls, t], dim=1) + sd["visual.positional_embedding"]
    t = ln(t, "visual.ln_pre")
    dh = w // HEADS
    for i in range(LAYERS):
        p = f"visual.transformer.resblocks.{i}"
        h = ln(t, f"{p}.ln_1")
        q = lin(h, f"{p}.attn.q_proj", True)
        k = lin(h, f"{p}.attn.k_proj", False)
        v = lin(h, f"{p}.attn.v_proj", True)
        n = h.shape[1]
        q, k, v = (z.reshape(b, n, HEADS, dh).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1) @ v
        a = a.transpose(1, 2).reshape(b, n, w)
        t = t + lin(a, f"{p}.attn.proj", False)
        h = ln(t, f"{p}.ln_2")
        h = lin(act(lin(h, f"{p}.mlp.c_fc", False)), f"{p}.mlp.c_proj", False)
        t = t + h
    return ln(t[:, 0], "visual.ln_post") @ sd["visual.proj"]


def spec_from_toml(tmp_path, body: str, mid: str = "m") -> ModelSpec:
    text = (f"[models.{mid}]\n{body}\n\n[datasets.d]\ntype = \"classification\"\n"
            "format = \"imagefolder\"\nroot = \"data\"\nprotocols = [\"zeroshot\"]\n")
    return parse_suite(text, str(tmp_path / "suite.toml")).models[mid]


def lora_spec(tmp_path, tiny, ckpt, scaling="rslora", rank_line="", extra=""):
    return spec_from_toml(tmp_path, f"""
arch = "{tiny['arch']}"
checkpoint = "{ckpt}"
checkpoint_format = "clip-lora"
lora = {{ alpha = {ALPHA}, scaling = "{scaling}" {rank_line} }}
{extra}""")


def images(n=3, seed=5):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def embed(lm, x):
    return lm.encode_image(x).double()


# ------------------------------------------------------------------ clip-lora correctness

@pytest.mark.parametrize("scaling", ["rslora", "standard"])
def test_clip_lora_matches_unmerged_forward(tmp_path, tiny, scaling):
    ck = to_clip_lora(tiny["sd"])
    path = tmp_path / "froundation.pt"
    torch.save(ck, path)
    spec = lora_spec(tmp_path, tiny, path, scaling)
    lm = load_model(spec)
    # the OpenAI clip package always uses QuickGELU, whatever the open_clip config says
    assert type(lm.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    x = images()
    got = embed(lm, x)
    s = ALPHA / math.sqrt(RANK) if scaling == "rslora" else ALPHA / RANK
    ref = reference_encode_image(ck, x, s, quick_gelu)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the check can tell the rules, the activation and LoRA-or-not apart
    other = ALPHA / RANK if scaling == "rslora" else ALPHA / math.sqrt(RANK)
    for wrong in (reference_encode_image(ck, x, other, quick_gelu),
                  reference_encode_image(ck, x, s, F.gelu),
                  reference_encode_image(ck, x, 0.0, quick_gelu)):
        assert (got - wrong).abs().max() > 1e-3
    # text tower untouched, copied as is
    torch.testing.assert_close(lm.model.token_embedding.weight, ck["token_embedding.weight"])


def test_clip_lora_file_flavours_load_identically(tmp_path, tiny):
    from safetensors.torch import save_file

    ck = to_clip_lora(tiny["sd"])
    plain = tmp_path / "plain.pt"
    torch.save(ck, plain)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ck.items()}, "epoch": 7}, wrapped)
    model_key = tmp_path / "model_key.pt"
    torch.save({"model": dict(ck, input_resolution=torch.tensor(SIZE))}, model_key)
    st = tmp_path / "ck.safetensors"
    save_file({k: v.contiguous() for k, v in ck.items()}, str(st))
    x = images()
    ref = embed(load_model(lora_spec(tmp_path, tiny, plain)), x)
    for p in (wrapped, model_key, st):
        torch.testing.assert_close(embed(load_model(lora_spec(tmp_path, tiny, p)), x), ref,
                                   atol=0, rtol=0)


def test_convert_is_pure_and_merges(tiny):
    ck = to_clip_lora(tiny["sd"])
    before = {k: v.clone() for k, v in ck.items()}
    out = convert_clip_lora_state_dict(ck, alpha=ALPHA, scaling="standard", rank=RANK)
    assert ck.keys() == before.keys() and all(torch.equal(ck[k], before[k]) for k in ck)
    assert set(out) == set(tiny["sd"])
    p = "visual.transformer.resblocks.1.attn"
    q = ck[f"{p}.q_proj.weight"] + ALPHA / RANK * ck[f"{p}.q_proj.w_lora_B"] @ ck[f"{p}.q_proj.w_lora_A"]
    v = ck[f"{p}.v_proj.weight"] + ALPHA / RANK * ck[f"{p}.v_proj.w_lora_B"] @ ck[f"{p}.v_proj.w_lora_A"]
    want = torch.cat([q, ck[f"{p}.k_proj.weight"], v])
    torch.testing.assert_close(out[f"{p}.in_proj_weight"], want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[f"{p}.out_proj.weight"], ck[f"{p}.proj.weight"])
    torch.testing.assert_close(out[f"{p}.in_proj_bias"], tiny["sd"][f"{p}.in_proj_bias"])


@pytest.mark.parametrize("arch,n_keys", [("ViT-B-16", 398), ("ViT-L-14", 638)])
def test_real_architectures_key_layout(arch, n_keys):
    """The published layouts (398 keys for B/16, 638 for L/14) convert to open_clip's exactly."""
    from open_clip.model import CLIP

    cfg = open_clip.get_model_config(arch)
    with torch.device("meta"):
        model = CLIP(**cfg)
        ref = model.state_dict()
        ck = to_clip_lora(ref, rank=16)
        assert len(ck) == n_keys
        out = convert_clip_lora_state_dict(ck, alpha=32, scaling="rslora", rank=16)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in ref.items()}


# ----------------------------------------------------------------------- clip-lora errors

def test_rank_mismatch_names_key_and_both_ranks(tmp_path, tiny):
    path = tmp_path / "ck.pt"
    torch.save(to_clip_lora(tiny["sd"]), path)
    spec = lora_spec(tmp_path, tiny, path, rank_line=", rank = 8")
    with pytest.raises(ModelError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert "lora.rank = 8" in msg and "rank 4" in msg
    assert "visual.transformer.resblocks.0.attn.q_proj.w_lora_A" in msg
    assert str(tmp_path / "suite.toml") in msg and "[models.m]" in msg
    # the right rank is accepted
    load_model(lora_spec(tmp_path, tiny, path, rank_line=", rank = 4"))


def test_key_mismatch_lists_first_keys(tmp_path, tiny):
    ck = to_clip_lora(tiny["sd"])
    del ck["visual.ln_post.weight"]
    ck["visual.bogus"] = torch.zeros(3)
    path = tmp_path / "ck.pt"
    torch.save(ck, path)
    with pytest.raises(ModelError) as e:
        load_model(lora_spec(tmp_path, tiny, path))
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing 1 key: visual.ln_post.weight" in msg
    assert "unexpected 1 key: visual.bogus" in msg
    assert tiny["arch"] in msg and "clip-lora" in msg and str(path) in msg


def test_wrong_architecture_reports_shapes(tmp_path, tiny):
    ck = to_clip_lora(tiny["sd"])
    ck["visual.positional_embedding"] = torch.zeros(50, WIDTH)  # a 7x7 grid: another image size
    path = tmp_path / "ck.pt"
    torch.save(ck, path)
    with pytest.raises(ModelError, match=r"shape mismatch .*visual\.positional_embedding \[50, 64\] vs \[17, 64\]"):
        load_model(lora_spec(tmp_path, tiny, path))


def test_open_clip_file_given_as_clip_lora_is_named(tmp_path, tiny):
    path = tmp_path / "oc.pt"
    torch.save(tiny["sd"], path)
    with pytest.raises(ModelError, match="not a clip-lora checkpoint; use checkpoint_format = 'open_clip'"):
        load_model(lora_spec(tmp_path, tiny, path))


def test_suite_requires_alpha_and_scaling(tmp_path, tiny):
    from harness.errors import SuiteError

    with pytest.raises(SuiteError, match="lora"):
        spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "x.pt"\n'
                                 'checkpoint_format = "clip-lora"\nlora = { rank = 4 }')


# ------------------------------------------------------------------ open_clip checkpoints

def _tiny_reference_model(tiny):
    m = open_clip.create_model(tiny["arch"])
    m.load_state_dict(tiny["sd"])
    return m.eval()


def test_open_clip_checkpoint_wrapped_and_prefixed(tmp_path, tiny):
    path = tmp_path / "oc.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny["sd"].items()}}, path)
    spec = spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "{path}"')
    lm = load_model(spec)
    x = images()
    with torch.no_grad():
        want = _tiny_reference_model(tiny).encode_image(x)
    torch.testing.assert_close(lm.encode_image(x), want, atol=0, rtol=0)


def test_open_clip_checkpoint_key_mismatch(tmp_path, tiny):
    sd = dict(tiny["sd"])
    del sd["logit_scale"]
    path = tmp_path / "oc.pt"
    torch.save(sd, path)
    spec = spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "{path}"')
    with pytest.raises(ModelError, match=r"'open_clip'.*missing 1 key: logit_scale"):
        load_model(spec)


def test_pretrained_file_and_local_dir_weights(tmp_path, tiny):
    """``pretrained = "/path/file"`` with a named arch, and a local-dir: folder with weights."""
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "tb-tiny-vit.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg_dir)
    weights = tmp_path / "w.pt"
    torch.save(tiny["sd"], weights)
    x = images()
    with torch.no_grad():
        want = _tiny_reference_model(tiny).encode_image(x)
    lm = load_model(spec_from_toml(tmp_path, f'arch = "tb-tiny-vit"\npretrained = "{weights}"'))
    torch.testing.assert_close(lm.encode_image(x), want, atol=0, rtol=0)

    ld = tmp_path / "ld"
    ld.mkdir()
    (ld / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    torch.save(tiny["sd"], ld / "open_clip_pytorch_model.bin")
    lm = load_model(spec_from_toml(tmp_path, f'arch = "local-dir:{ld}"'))
    torch.testing.assert_close(lm.encode_image(x), want, atol=0, rtol=0)

    with pytest.raises(ModelError, match=r"\[models\.m\] pretrained = '.*nope\.pt': file not found"):
        load_model(spec_from_toml(tmp_path, f'arch = "tb-tiny-vit"\npretrained = "{tmp_path}/nope.pt"'))


def test_missing_checkpoint_names_suite_table_key_path(tmp_path, tiny):
    path = tmp_path / "absent.pt"
    spec = lora_spec(tmp_path, tiny, path)
    with pytest.raises(ModelError) as e:
        load_model(spec)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'suite.toml'}: [models.m] checkpoint = '{path}'")
    assert msg.endswith("file not found")


# ---------------------------------------------------------------- open_clip weight sources

def test_create_plan_quick_gelu_and_no_pretrained_under_checkpoint():
    def spec(**kw):
        return ModelSpec(id="m", source="s.toml", **kw)

    kw, f = _create_plan(spec(arch="ViT-B-16", pretrained="openai"))
    assert kw["force_quick_gelu"] and kw["pretrained"] == "openai" and kw["require_pretrained"]
    kw, f = _create_plan(spec(arch="ViT-B-16", pretrained="openai", checkpoint="/x.pt",
                              checkpoint_format="clip-lora"))
    assert kw["force_quick_gelu"] and kw["pretrained"] is None and f is None
    kw, _ = _create_plan(spec(arch="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    assert not kw["force_quick_gelu"]
    with pytest.raises(ModelError, match="not a pretrained tag of 'ViT-B-16'.*openai"):
        _create_plan(spec(arch="ViT-B-16", pretrained="opneai"))
    with pytest.raises(ModelError, match="did you mean 'ViT-B-16'"):
        _create_plan(spec(arch="ViT-B-61", pretrained="openai"))


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_missing_tag_weights_name_file_and_fix(tmp_path, hf_offline):
    spec = spec_from_toml(tmp_path, 'arch = "ViT-B-16"\npretrained = "openai"')
    with pytest.raises(ModelError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert "open_clip_pytorch_model.bin" in msg and "timm/vit_base_patch16_clip_224.openai" in msg
    assert "HF_HUB_OFFLINE" in msg and "hf download" in msg and "pretrained = '/path/to/" in msg


def test_offline_hf_hub_without_weights_is_an_error_not_random_weights(tmp_path, hf_offline):
    """open_clip alone only logs a warning and returns random weights when the config is cached
    but the weights are not."""
    snap = hf_offline / "models--tb--tiny" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    (hf_offline / "models--tb--tiny" / "refs").mkdir()
    (hf_offline / "models--tb--tiny" / "refs" / "main").write_text("0" * 40)
    spec = spec_from_toml(tmp_path, 'arch = "hf-hub:tb/tiny"')
    with pytest.raises(ModelError, match=r"arch = 'hf-hub:tb/tiny'.*open_clip_model\.safetensors.*hf download tb/tiny"):
        load_model(spec)
    with pytest.raises(ModelError, match="open_clip_config.json"):
        load_model(spec_from_toml(tmp_path, 'arch = "hf-hub:tb/absent"'))


# -------------------------------------------------------------------------------- heads

def _head_spec(tmp_path, tiny, head, polarity="bonafide"):
    ck = tmp_path / "oc.pt"
    if not ck.exists():
        torch.save(tiny["sd"], ck)
    return spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "{ck}"\n'
                                    f'head = "{head}"\nscore_polarity = "{polarity}"')


def test_head_scores_hand_checked_and_attack_polarity(tmp_path, tiny):
    w = torch.zeros(2, EMBED)
    w[1, 0], w[1, 1] = 1.0, 2.0
    b = torch.tensor([0.5, -0.2])
    head = tmp_path / "head.pt"
    torch.save({"linear.weight": w, "linear.bias": b}, head)
    lm = load_model(_head_spec(tmp_path, tiny, head))
    f = np.zeros((2, EMBED), np.float32)
    f[0, 0], f[0, 1] = 3.0, 4.0          # normalised: (0.6, 0.8) -> logits (0.5, 0.6 + 1.6 - 0.2)
    f[1, 2] = 10.0                       # orthogonal to w -> logits (0.5, -0.2)
    want = np.array([1 / (1 + math.exp(0.5 - 2.0)), 1 / (1 + math.exp(0.5 + 0.2))])
    np.testing.assert_allclose(lm.head.score(f), want, rtol=1e-7)  # float32 bias
    # on real embeddings: softmax of the head on the L2-normalised embedding
    e = lm.encode_image(images())
    p = torch.softmax(F.normalize(e.double(), dim=1) @ w.double().T + b.double(), dim=1)[:, 1]
    np.testing.assert_allclose(lm.head.score(e.numpy()), p.numpy(), rtol=1e-10)

    lm2 = load_model(_head_spec(tmp_path, tiny, head, "attack"))
    np.testing.assert_allclose(lm2.head.score(f), 1 - want, rtol=1e-7)
    assert lm.head.fingerprint() != lm2.head.fingerprint()


@pytest.mark.parametrize("keys", [("head.linear.weight", "head.linear.bias"), ("weight", "bias"),
                                  ("module.head.weight", "module.head.bias")])
def test_head_key_variants(tmp_path, tiny, keys):
    head = tmp_path / "head.pt"
    torch.save({keys[0]: torch.ones(2, EMBED), keys[1]: torch.tensor([1.0, 2.0])}, head)
    w, b = read_head(_head_spec(tmp_path, tiny, head), EMBED)
    assert w.dtype == np.float32 and w.shape == (2, EMBED) and b.tolist() == [1.0, 2.0]


def test_head_errors(tmp_path, tiny):
    head = tmp_path / "head.pt"
    torch.save({"linear.weight": torch.ones(2, EMBED + 1), "linear.bias": torch.zeros(2)}, head)
    with pytest.raises(ModelError, match=rf"\[2, {EMBED + 1}\] but arch .* gives {EMBED}-dimensional"):
        load_model(_head_spec(tmp_path, tiny, head))
    torch.save({"linear.weight": torch.ones(EMBED, 2), "linear.bias": torch.zeros(2)}, head)
    with pytest.raises(ModelError, match="transposed"):
        load_model(_head_spec(tmp_path, tiny, head))
    torch.save({"linear.weight": torch.ones(2, EMBED), "linear.bias": torch.zeros(2),
                "fc2.weight": torch.ones(2, 2)}, head)
    with pytest.raises(ModelError, match="also found: fc2.weight"):
        load_model(_head_spec(tmp_path, tiny, head))


# ------------------------------------------------------------------------ unsafe pickles

class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))   # unpickling it creates the target file


def _write_evil(path, target, kind):
    payload = {"visual.conv1.weight": torch.zeros(1), "x": _Evil(str(target))}
    if kind == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("role", ["checkpoint", "clip-lora", "head", "pretrained"])
def test_crafted_pickle_is_refused_and_not_run(tmp_path, tiny, kind, role):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _write_evil(evil, target, kind)
    # control: the file really would run code under a plain unpickler
    control_target, control = tmp_path / "control-pwned", tmp_path / "control.pt"
    _write_evil(control, control_target, kind)
    if kind == "pickle":
        with open(control, "rb") as f:
            pickle.load(f)
    else:
        torch.load(control, weights_only=False)
    assert control_target.exists()

    if role == "checkpoint":
        spec = spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "{evil}"')
    elif role == "clip-lora":
        spec = lora_spec(tmp_path, tiny, evil)
    elif role == "head":
        spec = _head_spec(tmp_path, tiny, evil)
    else:
        ld = tmp_path / "ld"
        ld.mkdir()
        (ld / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
        os.replace(evil, ld / "open_clip_pytorch_model.bin")
        evil = ld / "open_clip_pytorch_model.bin"
        spec = spec_from_toml(tmp_path, f'arch = "local-dir:{ld}"')
    with pytest.raises(UnsafePickleError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "\n" not in msg and str(evil) in msg and "nothing in the file was executed" in msg
    assert not target.exists()


def test_safe_load_legacy_format_and_garbage(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.arange(3)}, legacy, _use_new_zipfile_serialization=False)
    assert safe_load(legacy)["a"].tolist() == [0, 1, 2]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="junk.pt.*not a torch checkpoint"):
        safe_load(junk)


# --------------------------------------------------------------------------- preprocessing

def _constant(rgb, size=40):
    return Image.new("RGB", (size, size), rgb)


@pytest.mark.parametrize("preset,mean,std", [("clip", CLIP_MEAN, CLIP_STD),
                                             ("imagenet", IMAGENET_MEAN, IMAGENET_STD),
                                             ("half", HALF, HALF), (None, CLIP_MEAN, CLIP_STD)])
def test_preset_mean_std_on_constant_image(preset, mean, std):
    rgb = (200, 100, 50)
    p = build_preprocess(PreprocessSpec(preset=preset), {"size": (24, 24), "mean": CLIP_MEAN,
                                                         "std": CLIP_STD})
    x = p.transform()(_constant(rgb))
    assert tuple(x.shape) == (3, 24, 24)
    for c in range(3):
        want = (rgb[c] / 255 - mean[c]) / std[c]
        torch.testing.assert_close(x[c], torch.full((24, 24), want), atol=1e-5, rtol=0)


def test_bgr_order_moves_red_to_channel_2():
    red = _constant((255, 0, 0))
    rgb = build_preprocess(PreprocessSpec(preset="half"), {"size": 16}).transform()(red)
    bgr = build_preprocess(PreprocessSpec(preset="half", channel_order="bgr"), {"size": 16}).transform()(red)
    assert rgb[0].min() == 1.0 and rgb[2].max() == -1.0
    assert bgr[2].min() == 1.0 and bgr[0].max() == -1.0 and bgr[1].max() == -1.0


def test_suite_preprocess_reaches_loaded_model(tmp_path, tiny):
    ck = tmp_path / "oc.pt"
    torch.save(tiny["sd"], ck)
    spec = spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "{ck}"\n'
                                    'preprocess = { preset = "imagenet", channel_order = "bgr" }')
    lm = load_model(spec)
    assert lm.preprocess.size == SIZE           # from the open_clip config
    assert lm.preprocess.mean == IMAGENET_MEAN and lm.preprocess.channel_order == "bgr"
    x = lm.preprocess.transform()(_constant((255, 0, 0)))
    torch.testing.assert_close(x[2], torch.full((SIZE, SIZE), (1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]))
    # preprocessing is part of what a cached feature depends on
    plain = spec_from_toml(tmp_path, f'arch = "{tiny["arch"]}"\ncheckpoint = "{ck}"')
    assert load_model(plain).preprocess.fingerprint != lm.preprocess.fingerprint
