"""GPU check (issue 12, item 6): extraction throughput against its bounds, and autocast correctness.

    python tests/perf/gpu_check.py OUT_DIR [--device cuda] [--archs ViT-B-16,ViT-L-14]
                                           [--n 4096] [--batch 256] [--dtypes fp32,bf16,fp16]

For each architecture (random weights, open_clip's own preprocessing, ``force_quick_gelu`` as
the study's OpenAI weights use):

1. Bounds: (a) the bare forward, images/s on in-memory batches already on the device, per
   compute dtype; (b) decoding + preprocessing of ``n`` JPEG images with the harness's
   DataLoader settings, no model.
2. The harness: :func:`harness.features.extract_many` for one model, per dtype, and for four
   models (different weights) sharing one decode pass, in the first reduced-precision dtype.
   ``ratio_to_bound`` = harness images/s / min(forward, decode) -- 1.0 is the best possible.
3. Autocast correctness, per reduced-precision dtype: cosine of fp32 vs autocast image features,
   text classifier cosine, and zero-shot top-1 agreement on 100 made-up classes.

Writes OUT_DIR/gpu_check.json and prints it.  ``--device cpu --archs tiny --n 64`` runs the
same code on the CPU with the tests' tiny CLIP (tests/test_gpu_check_script.py keeps it working;
autocast applies on CUDA only, so on the CPU every dtype is fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _images(n: int, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.jpg"
        if not p.exists():
            arr = np.roll(base, i, 0) // 2 + rng.integers(0, 128, size=base.shape, dtype=np.uint8)
            Image.fromarray(arr.astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def _network(arch: str, seed: int):
    import open_clip

    torch.manual_seed(seed)
    if arch == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tiny_clip import TINY_CFG

        net = open_clip.CLIP(**TINY_CFG)
        net.visual.preprocess_cfg = {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}
        return net, open_clip.get_tokenizer("ViT-B-16", context_length=12)
    net = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)
    return net, open_clip.get_tokenizer(arch)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check(out_dir: str, device: str, archs: list[str], n: int, bs: int, dtypes: list[str]) -> dict:
    from torch.utils.data import DataLoader

    from harness.data.base import Split
    from harness.features import Need, _MultiDataset, _num_workers, extract_many
    from harness.models import LoadedModel
    from harness.models.preprocess import build_preprocess
    from harness.protocols.zeroshot import build_classifier
    from harness.suite import ModelSpec, PreprocessSpec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else device,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "images": n,
        "batch": bs,
    }
    paths = _images(n, Path(os.environ.get("GPU_CHECK_IMAGES", "/tmp/gpu_check_imgs")))
    split = Split("test", paths, np.zeros(n, dtype=np.int64))
    reduced = [d for d in dtypes if d != "fp32"]
    for arch in archs:
        r: dict = {}
        res[arch] = r
        nets = [_network(arch, seed) for seed in range(4)]
        net0, tok = nets[0]
        pre = build_preprocess(PreprocessSpec(), dict(net0.visual.preprocess_cfg))

        def loaded(i: int, dtype: str, pre=pre, nets=nets, arch=arch) -> LoadedModel:
            net, tk = nets[i]
            spec = ModelSpec(id=f"{arch}-random-{i}", arch=arch, source="gpu_check")
            autocast = None if dtype == "fp32" else dtype
            return LoadedModel(spec, net.eval().to(device), tk, pre, device, f"fp{i}", None, autocast)

        # (b) the decode bound
        ds = _MultiDataset(split, [pre.transform()], [pre.size])
        workers = _num_workers(n, None)
        t0 = time.perf_counter()
        batches = [b[0][0] for b in DataLoader(ds, batch_size=bs, num_workers=workers)]
        r["decode_ips"] = n / (time.perf_counter() - t0)
        r["loader_workers"] = workers
        on_device = [b.to(device) for b in batches]
        for dtype in dtypes:
            m = loaded(0, dtype)
            r[f"compute_dtype_{dtype}"] = m.compute_dtype
            for b in on_device[:2]:  # warm-up (kernels, autotuning)
                m.encode_image(b)
            _sync(device)
            t0 = time.perf_counter()
            for b in on_device:
                m.encode_image(b)
            _sync(device)
            r[f"forward_ips_{dtype}"] = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            extract_many([Need(m)], split, batch_size=bs)
            _sync(device)
            r[f"extract_ips_{dtype}"] = n / (time.perf_counter() - t0)
            bound = min(r[f"forward_ips_{dtype}"], r["decode_ips"])
            r[f"ratio_to_bound_{dtype}"] = r[f"extract_ips_{dtype}"] / bound
        # four models sharing one decode pass (the feature stage's case)
        shared = (reduced or dtypes)[0]
        one = r[f"extract_ips_{shared}"]
        t0 = time.perf_counter()
        extract_many([Need(loaded(i, shared)) for i in range(4)], split, batch_size=bs)
        _sync(device)
        four = time.perf_counter() - t0
        r[f"four_models_shared_s_{shared}"] = four
        r[f"four_models_vs_one_{shared}"] = four / (n / one)
        # autocast correctness on the same inputs
        x = torch.cat(batches[:4])
        m32 = loaded(0, "fp32")
        f32 = m32.encode_image(x).cpu().numpy()
        names = [f"class {i}" for i in range(100)]
        templates = ["a photo of a {c}.", "a picture of a {c}."]
        w32 = build_classifier(lambda t: m32.encode_text(t).cpu(), names, templates)
        p32 = (f32 / np.linalg.norm(f32, axis=1, keepdims=True)) @ w32
        for dtype in reduced:
            mr = loaded(0, dtype)
            fr = mr.encode_image(x).cpu().numpy()
            cos = (f32 * fr).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(fr, axis=1)
            wr = build_classifier(lambda t, mr=mr: mr.encode_text(t).cpu(), names, templates)
            pr = (fr / np.linalg.norm(fr, axis=1, keepdims=True)) @ wr
            r[f"autocast_{dtype}_feature_cosine_min"] = float(cos.min())
            r[f"autocast_{dtype}_feature_cosine_mean"] = float(cos.mean())
            r[f"autocast_{dtype}_text_cosine_min"] = float((w32 * wr).sum(0).min())
            r[f"autocast_{dtype}_zeroshot_top1_agreement"] = float((p32.argmax(1) == pr.argmax(1)).mean())
        del nets, on_device
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    text = json.dumps(res, indent=2)
    (out / "gpu_check.json").write_text(text)
    print(text)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default=".")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--archs", default="ViT-B-16,ViT-L-14")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    a = ap.parse_args(argv)
    check(a.out_dir, a.device, a.archs.split(","), a.n, a.batch, a.dtypes.split(","))


if __name__ == "__main__":
    main()
