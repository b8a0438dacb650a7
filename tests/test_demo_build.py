"""The embedded demo's assets (fixtures/demo): one real build, then checks of what it wrote.

The build runs once per module (about a minute on one core); every other check reads files.
Thresholds were measured on the seeded build and carry a margin; the measured values are in
the comments.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from tradeoff_bench_fixtures.demo import build_info, ensure_demo  # noqa: E402
from tradeoff_bench_fixtures.demo import build as B  # noqa: E402

RANK, ALPHA = 4, 8.0
SCALE = ALPHA / math.sqrt(RANK)  # rslora
VARIANTS = ("fr", "mad", "pad")
ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                    [41.5493, 92.3655], [70.7299, 92.2041]])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base_temp = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one build per session, shared by the xdist workers (the parent of the workers'
        # base folders belongs to this session); ensure_demo's lock makes the others wait
        base_temp = base_temp.parent
    root = base_temp / "demo-build" / "demo"
    t0 = time.perf_counter()
    ensure_demo(root)
    seconds = time.perf_counter() - t0
    print(f"\ndemo build: {seconds:.1f} s; log: "
          + json.dumps({k: v for k, v in build_info(root).items() if k != "reference_embeddings"}))
    return root


@pytest.fixture(scope="module")
def base(demo):
    path = "local-dir:" + str(demo / "models" / "base")
    model, _, preprocess = open_clip.create_model_and_transforms(path)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(path)


def _load_ckpt(demo, task):
    return torch.load(demo / "models" / task / "checkpoint.pt", map_location="cpu",
                      weights_only=True)


def merge_clip_lora(sd: dict, scale: float) -> dict:
    """clip-lora layout -> open_clip state dict, written here independently of the build."""
    out = {}
    blocks = {k.rsplit(".attn.", 1)[0] for k in sd if ".attn.q_proj.weight" in k}
    for k, v in sd.items():
        if ".attn." in k and k.rsplit(".attn.", 1)[0] in blocks:
            continue
        out[k] = v
    for b in blocks:
        p = b + ".attn."
        w = {}
        for n in ("q", "k", "v"):
            wn = sd[p + f"{n}_proj.weight"].double()
            if p + f"{n}_proj.w_lora_A" in sd:
                a, b = sd[p + f"{n}_proj.w_lora_A"], sd[p + f"{n}_proj.w_lora_B"]
                wn = wn + scale * b.double() @ a.double()
            w[n] = wn.float()
        out[p + "in_proj_weight"] = torch.cat([w["q"], w["k"], w["v"]])
        out[p + "in_proj_bias"] = torch.cat([sd[p + f"{n}_proj.bias"] for n in "qkv"])
        out[p + "out_proj.weight"] = sd[p + "proj.weight"]
        out[p + "out_proj.bias"] = sd[p + "proj.bias"]
    return out


def _variant_model(demo, task, merge=merge_clip_lora):
    model = open_clip.create_model("local-dir:" + str(demo / "models" / "base"))
    model.load_state_dict(merge(_load_ckpt(demo, task), SCALE), strict=True)
    return model.eval()


def _embed(model, preprocess, images, flip=False):
    x = torch.stack([preprocess(im) for im in images])
    if flip:
        x = x.flip(3)
    with torch.no_grad():
        f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    return f.numpy().astype(np.float64)


def _auc(scores, labels):
    """ROC AUC (bona fide / genuine = 1 positive), ties counted half."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    pos, neg = s[y == 1], s[y == 0]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum())
                 / (len(pos) * len(neg)))


def _read_csv(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


# --------------------------------------------------------------------------------- layout

def test_layout(demo):
    for rel in ("models/base/open_clip_config.json", "models/base/open_clip_model.safetensors",
                "models/fr/checkpoint.pt", "models/mad/checkpoint.pt", "models/mad/head.pt",
                "models/pad/checkpoint.pt", "models/pad/head.pt", "data/faces.bin",
                "data/ijb/meta/ijbc_face_tid_mid.txt", "data/ijb/meta/ijbc_template_pair_label.txt",
                "data/ijb/meta/ijbc_name_5pts_score.txt", "data/mad/test.csv",
                "data/mad/train.csv", "data/pad/test.csv", "data/pad/train.csv",
                "data/pad/dev.csv", "BUILD_OK"):
        assert (demo / rel).is_file(), rel
    assert not (demo / "models" / "fr" / "head.pt").exists()  # the CosFace head is discarded
    counts = {}
    for split in ("train", "test"):
        classes = sorted(p.name for p in (demo / "data" / "digits" / split).iterdir())
        assert classes == [str(c) for c in range(10)]
        files = sorted((demo / "data" / "digits" / split).glob("*/*.png"))
        counts[split] = len(files)
        im = Image.open(files[0])
        assert im.size == (32, 32) and im.mode == "RGB"
    assert counts == {"train": 1198, "test": 599}
    # the digits PNGs are the same split as the contrastive fit
    _, labels, tr, te = B.digits_split()
    names = {int(p.stem) for p in (demo / "data" / "digits" / "test").glob("*/*.png")}
    assert names == set(te.tolist())
    # no temporary build folder left beside the root
    assert [p.name for p in demo.parent.iterdir() if p.name.startswith(".")] == []


def test_second_call_returns_without_rebuilding(demo, monkeypatch):
    import tradeoff_bench_fixtures.demo as demo_mod

    def no_build(out):
        raise AssertionError("rebuilt a finished demo")

    monkeypatch.setattr(demo_mod, "_build_seeded", no_build)
    marker = demo / "BUILD_OK"
    before = marker.stat().st_mtime_ns
    assert ensure_demo(demo) == demo
    assert marker.stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- base model

def test_base_config_and_loading(demo, base):
    model, preprocess, tokenizer = base
    cfg = json.loads((demo / "models" / "base" / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["custom_text"] is False and cfg["model_cfg"]["quick_gelu"] is True
    assert type(model) is open_clip.CLIP
    n = sum(p.numel() for p in model.parameters())
    assert n <= 5_000_000, n
    assert cfg["preprocess_cfg"]["size"] == 32
    assert cfg["preprocess_cfg"]["interpolation"] == "bicubic"
    ctx = cfg["model_cfg"]["text_cfg"]["context_length"]
    assert tokenizer(["a photo of the number: \"7\"."]).shape == (1, ctx)
    assert tokenizer(["word " * 50]).shape == (1, ctx)  # truncated to the context length


def test_base_zero_shot_on_digits(demo, base):
    model, preprocess, tokenizer = base
    root = Path(__file__).resolve().parents[1] / "harness" / "data"
    templates = json.loads(
        (root / "en_zeroshot_classification_templates.json").read_text())["mnist"]
    classnames = json.loads((root / "en_classnames.json").read_text())["mnist"]
    W = open_clip.build_zero_shot_classifier(
        model, tokenizer, classnames, [lambda c, t=t: t.replace("{c}", c) for t in templates])
    files = sorted((demo / "data" / "digits" / "test").glob("*/*.png"))
    y = np.array([int(p.parent.name) for p in files])
    f = _embed(model, preprocess, [Image.open(p).convert("RGB") for p in files])
    acc = float(((f @ W.numpy().astype(np.float64)).argmax(1) == y).mean())
    print(f"base zero-shot top-1 on digits test: {acc:.4f}")
    assert acc >= 0.80, acc  # measured 0.913; chance 0.1
    assert abs(acc - build_info(demo)["base_zeroshot_acc1_digits_test"]) < 0.01


# ------------------------------------------------------------------------- variant checkpoints

def _expected_keys(base_keys):
    keys = set()
    for k in base_keys:
        head, sep, tail = k.rpartition(".attn.")
        if sep and head.startswith("visual.transformer.resblocks."):
            if tail == "in_proj_weight":
                keys |= {f"{head}.attn.{n}_proj.weight" for n in "qkv"}
                keys |= {f"{head}.attn.{n}_proj.w_lora_{f}" for n in "qv" for f in "AB"}
            elif tail == "in_proj_bias":
                keys |= {f"{head}.attn.{n}_proj.bias" for n in "qkv"}
            else:
                keys.add(f"{head}.attn.proj.{tail.split('.')[-1]}")
        else:
            keys.add(k)
    return keys


@pytest.mark.parametrize("task", VARIANTS)
def test_variant_checkpoint_layout(demo, base, task):
    model = base[0]
    base_sd = model.state_dict()
    sd = _load_ckpt(demo, task)
    d = model.visual.transformer.width
    assert set(sd) == _expected_keys(base_sd)
    assert not any(k.endswith(("in_proj_weight", "out_proj.weight"))
                   for k in sd if k.startswith("visual."))
    assert all(v.dtype == torch.float32 for v in sd.values())
    n_blocks = len(model.visual.transformer.resblocks)
    for i in range(n_blocks):
        p = f"visual.transformer.resblocks.{i}.attn."
        for n in "qv":
            A, Bm = sd[p + f"{n}_proj.w_lora_A"], sd[p + f"{n}_proj.w_lora_B"]
            assert A.shape == (RANK, d) and Bm.shape == (d, RANK)
            assert Bm.abs().max() > 0  # trained, not the zero init
        # the base weights are kept unmerged
        W = base_sd[p[:-1] + ".in_proj_weight"]
        for j, n in enumerate("qkv"):
            assert torch.equal(sd[p + f"{n}_proj.weight"], W[j * d:(j + 1) * d])
        assert torch.equal(sd[p + "proj.weight"], base_sd[p + "out_proj.weight"])
    # everything outside the LoRA factors is the base, bit for bit: the text tower in particular
    text = [k for k in base_sd if not k.startswith("visual.")]
    assert "token_embedding.weight" in text and "text_projection" in text and "logit_scale" in text
    for k in base_sd:
        if k in sd:
            assert torch.equal(sd[k], base_sd[k]), k
    if task != "fr":
        head = torch.load(demo / "models" / task / "head.pt", weights_only=True)
        assert set(head) == {"linear.weight", "linear.bias"}
        assert head["linear.weight"].shape == (2, model.visual.output_dim)
        assert head["linear.bias"].shape == (2,)


@pytest.mark.parametrize("task", VARIANTS)
def test_merged_variant_reproduces_finetuned_embeddings(demo, base, task):
    preprocess = base[1]
    bins, _ = pickle.load(open(demo / "data" / "faces.bin", "rb"))
    probe = [Image.open(io.BytesIO(b)).convert("RGB") for b in bins[:4]]
    ref = np.array(build_info(demo)["reference_embeddings"][task])
    x = torch.stack([preprocess(im) for im in probe])
    model = _variant_model(demo, task)
    with torch.no_grad():
        got = model.encode_image(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        base_emb = base[0].encode_image(x).numpy()
    assert np.abs(base_emb - ref).max() > 1e-3  # the LoRA changed something
    from harness.models.clip_lora import convert_clip_lora_state_dict

    harness_model = _variant_model(
        demo, task, lambda sd, s: convert_clip_lora_state_dict(sd, alpha=ALPHA, scaling="rslora"))
    with torch.no_grad():
        np.testing.assert_allclose(harness_model.encode_image(x).numpy(), ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------- in-domain figures

def _verification_accuracy(e1, e2, issame, n_folds=10):
    """InsightFace 10-fold accuracy on unit vectors (contiguous folds, thresholds 0..4)."""
    dist = ((e1 - e2) ** 2).sum(1)
    th = np.arange(0, 4, 0.01)
    folds = np.array_split(np.arange(len(dist)), n_folds)
    accs = []
    for k in range(n_folds):
        test = folds[k]
        train = np.concatenate([folds[j] for j in range(n_folds) if j != k])
        acc_tr = [((dist[train] < t) == issame[train]).mean() for t in th]
        best = th[int(np.argmax(acc_tr))]
        accs.append(((dist[test] < best) == issame[test]).mean())
    return float(np.mean(accs))


def test_fr_variant_verifies_better_than_base(demo, base):
    model, preprocess, _ = base
    bins, issame = pickle.load(open(demo / "data" / "faces.bin", "rb"))
    issame = np.array(issame)
    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in bins]

    def acc(m):
        e = _embed(m, preprocess, imgs) + _embed(m, preprocess, imgs, flip=True)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        return _verification_accuracy(e[0::2], e[1::2], issame)

    a_base, a_fr = acc(model), acc(_variant_model(demo, "fr"))
    print(f"faces.bin 10-fold accuracy: base {a_base:.4f}, fr {a_fr:.4f}")
    assert a_fr >= a_base + 0.10, (a_base, a_fr)  # measured: see the report
    assert a_fr >= 0.80


def _attack_split(root: Path, split: str):
    _, rows = _read_csv(root / f"{split}.csv")
    imgs = [Image.open(root / r[0]).convert("RGB") for r in rows]
    y = np.array([1 if r[1] == "bonafide" else 0 for r in rows])
    return imgs, y, rows


@pytest.mark.parametrize("task,min_auc", [("mad", 0.70), ("pad", 0.75)])
def test_attack_variant_head_beats_base(demo, base, task, min_auc):
    from sklearn.linear_model import LogisticRegression

    model, preprocess, _ = base
    root = demo / "data" / task
    te_imgs, y_te, _ = _attack_split(root, "test")
    tr_imgs, y_tr, _ = _attack_split(root, "train")
    head = torch.load(demo / "models" / task / "head.pt", weights_only=True)
    f = _embed(_variant_model(demo, task), preprocess, te_imgs)
    logits = f @ head["linear.weight"].numpy().T + head["linear.bias"].numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    score = p[:, 1] / p.sum(1)  # P(bona fide)
    auc = _auc(score, y_te)
    acc = float(((score >= 0.5) == y_te).mean())
    # the base has no head: give it the best chance, a logistic probe on the train split
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(_embed(model, preprocess, tr_imgs), y_tr)
    auc_base = _auc(clf.decision_function(_embed(model, preprocess, te_imgs)), y_te)
    print(f"{task}: head AUC {auc:.4f} acc {acc:.4f}; base probe AUC {auc_base:.4f}")
    assert auc >= min_auc and auc > auc_base + 0.05, (auc, auc_base)
    assert acc > 0.6


def test_variants_zero_shot_tradeoff(demo, base):
    """Each variant's digits zero-shot accuracy (the general-ability cost), computed here with
    open_clip's own classifier on every third test image: the base reads digits well and every
    specialised variant pays for its task (seeded build; full test split in the demo report:
    base 91.3 %, fr 73.0 %, mad 20.4 %, pad 42.4 %)."""
    _, preprocess, tokenizer = base
    files = sorted((demo / "data" / "digits" / "test").glob("*/*.png"))[::3]
    y = np.array([int(p.parent.name) for p in files])
    imgs = [Image.open(p).convert("RGB") for p in files]
    out = {}
    for name in ("base",) + VARIANTS:
        m = base[0] if name == "base" else _variant_model(demo, name)
        W = open_clip.build_zero_shot_classifier(
            m, tokenizer, [str(c) for c in range(10)],
            [lambda c: f'a photo of the number: "{c}".'])
        out[name] = float(((_embed(m, preprocess, imgs) @ W.numpy()).argmax(1) == y).mean())
    print("digits zero-shot (every 3rd test image):", out)
    assert out["base"] >= 0.85
    assert all(out[v] <= out["base"] - 0.10 for v in VARIANTS), out
    assert out["mad"] < out["fr"] and out["pad"] < out["fr"], out  # face-ID keeps the most


# ------------------------------------------------------------------------------- data files

def test_bin_pack_structure(demo):
    with open(demo / "data" / "faces.bin", "rb") as f:
        bins, issame = pickle.load(f)
    assert isinstance(bins, list) and isinstance(issame, list)
    assert len(bins) == 2 * len(issame) == 600
    assert all(isinstance(b, bytes) for b in bins) and all(type(s) is bool for s in issame)
    im = Image.open(io.BytesIO(bins[0]))
    assert im.format == "JPEG" and im.size == (112, 112) and im.mode == "RGB"
    folds = np.array_split(np.array(issame), 10)
    assert all(f.any() and (~f).any() for f in folds)
    from harness.data.insightface_bin import read_pack

    rbins, rissame = read_pack(demo / "data" / "faces.bin")  # the harness's restricted reader
    assert rbins == bins and list(rissame) == issame


def test_ijb_layout(demo):
    root = demo / "data" / "ijb"
    meta = root / "meta"
    tid_mid = [ln.split() for ln in (meta / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    pts = [ln.split() for ln in (meta / "ijbc_name_5pts_score.txt").read_text().splitlines()]
    pairs = np.loadtxt(root / "meta" / "ijbc_template_pair_label.txt", dtype=np.int64, ndmin=2)
    assert all(len(r) == 3 for r in tid_mid) and all(len(r) == 12 for r in pts)
    assert [r[0] for r in tid_mid] == [r[0] for r in pts]
    for r in tid_mid:
        assert (root / "loose_crop" / r[0]).is_file()
    templates: dict[int, dict[int, int]] = {}
    for _, t, m in tid_mid:
        templates.setdefault(int(t), {}).setdefault(int(m), 0)
        templates[int(t)][int(m)] += 1
    assert 35 <= len(templates) <= 50
    assert all(2 <= len(media) <= 4 for media in templates.values())
    assert all(1 <= n <= 3 for media in templates.values() for n in media.values())
    assert 200 <= len(pairs) <= 400 and set(pairs[:, 2]) == {0, 1}
    assert set(pairs[:, :2].ravel()) <= set(templates)
    # the landmarks undo the paste: a similarity fit onto the ArcFace template is tight
    im = Image.open(root / "loose_crop" / pts[0][0])
    assert im.size == (160, 160)
    for r in pts[:20]:
        lm = np.array(r[1:11], float).reshape(5, 2)
        score = float(r[11])
        assert 0 < score <= 1 and (lm >= 0).all() and (lm < 160).all()
        # similarity x' = a x - b y + tx, y' = b x + a y + ty, least squares
        x, y = lm[:, 0], lm[:, 1]
        one, zero = np.ones(5), np.zeros(5)
        M = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
        (a, b, tx, ty), *_ = np.linalg.lstsq(M, np.concatenate([ARCFACE[:, 0], ARCFACE[:, 1]]),
                                             rcond=None)
        fit = np.stack([a * x - b * y + tx, b * x + a * y + ty], 1)
        assert np.sqrt(((fit - ARCFACE) ** 2).sum(1).mean()) < 5.0
    from harness.data.ijb import open_ijb
    from types import SimpleNamespace

    ds = open_ijb(SimpleNamespace(root=str(root), id="ijb", source="test"))
    split = ds.splits["test"]
    assert len(split) == len(tid_mid)
    aligned = split.load(0)
    assert aligned.size == (112, 112)


def test_attack_lists(demo):
    for task, splits, types in (("mad", ("train", "test"), {"blend", "blend_blur"}),
                                ("pad", ("train", "dev", "test"), {"print", "replay"})):
        root = demo / "data" / task
        subjects = {}
        for split in splits:
            header, rows = _read_csv(root / f"{split}.csv")
            assert header == ["path", "label", "attack_type", "video_id", "subject_id"]
            assert 50 <= len(rows) <= 400
            for path, label, atype, vid, sid in rows:
                assert (root / path).is_file() and not Path(path).is_absolute()
                assert label in ("bonafide", "attack")
                assert (atype == "") == (label == "bonafide")
                assert atype == "" or atype in types
                assert sid
            assert {r[2] for r in rows if r[2]} == types
            subjects[split] = {s for r in rows for s in r[4].split("+")}
            if task == "pad":
                videos = {}
                for path, label, atype, vid, sid in rows:
                    videos.setdefault(vid, set()).add((label, atype, sid))
                assert all(len(v) == 1 for v in videos.values())
                assert {sum(1 for r in rows if r[3] == v) for v in videos} == {3}
        names = list(subjects)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                assert not subjects[names[i]] & subjects[names[j]], (task, names[i], names[j])
    # mad-folders layout: the same images as the lists
    mad = demo / "data" / "mad"
    for split, folder in (("test", mad), ("train", mad / "train")):
        _, rows = _read_csv(mad / f"{split}.csv")
        listed = sorted(str((mad / r[0]).resolve()) for r in rows)
        found = sorted(str(p.resolve()) for d in ("bonafide", "blend", "blend_blur")
                       for p in (folder / d).glob("*.png"))
        assert listed == found
    from harness.data.attack_list import read_list, read_method_folders

    for split in ("train", "test"):
        assert len(read_list(mad / f"{split}.csv", split)) > 0
    sp = read_method_folders(mad, "test", reserved=("train", "dev"))
    assert set(sp.meta["attack_type"]) == {"", "blend", "blend_blur"}
    sp = read_list(demo / "data" / "pad" / "test.csv")
    assert set(sp.meta["attack_type"]) == {"", "print", "replay"}


def test_face_generation_is_deterministic(tmp_path):
    a = B.write_bin(tmp_path / "a.bin", B.identity_pools()["bin"], n_pairs=20)
    b = B.write_bin(tmp_path / "b.bin", B.identity_pools()["bin"], n_pairs=20)
    assert a == b
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    import tradeoff_bench_fixtures.demo as demo_mod

    calls = []

    def fake_build(out):
        calls.append(out)
        time.sleep(0.3)
        (out / "models").mkdir()
        return {"fake": True}

    monkeypatch.setattr(demo_mod, "_build_seeded", fake_build)
    root = tmp_path / "d"
    results = []
    threads = [threading.Thread(target=lambda: results.append(demo_mod.ensure_demo(root)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [root] * 3
    assert (root / "BUILD_OK").is_file() and (root / "models").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.lock"]
