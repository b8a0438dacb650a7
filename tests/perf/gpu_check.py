"""GPU check (run on a machine with CUDA): extraction throughput and autocast correctness.

    python tests/perf/gpu_check.py OUT_DIR

1. Throughput on a ViT-B/16-sized open_clip model (random weights, 224 px) over JPEG images:
   (a) bare model forward on in-memory tensors, (b) bare decoding + preprocessing with the
   harness's DataLoader settings, (c) the harness's ``extract``; fp32 and bf16 autocast.
2. Autocast correctness: fp32 vs bf16 features (cosine similarity) and zero-shot predictions
   of the same model and text classifier (agreement of top-1).
Writes OUT_DIR/gpu_check.json and prints it.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main(out_dir: str) -> None:
    import open_clip

    from harness.data.base import Split
    from harness.features import _MultiDataset, _num_workers, extract
    from harness.models import LoadedModel
    from harness.models.preprocess import build_preprocess
    from harness.protocols.zeroshot import build_classifier
    from harness.suite import ModelSpec, PreprocessSpec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "cpus": os.cpu_count()}
    torch.manual_seed(0)
    net = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    pre = build_preprocess(PreprocessSpec(), dict(net.visual.preprocess_cfg))
    tok = open_clip.get_tokenizer("ViT-B-16")
    spec = ModelSpec(id="vit-b-16-random", arch="ViT-B-16", source="gpu_check")
    net = net.eval().to("cuda")
    n = 4096
    img_dir = Path("/tmp/gpu_check_imgs")
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    paths = []
    for i in range(n):
        p = img_dir / f"{i:05d}.jpg"
        if not p.exists():
            arr = (np.roll(base, i, 0) // 2 + rng.integers(0, 128, size=base.shape, dtype=np.uint8))
            Image.fromarray(arr.astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    split = Split("test", paths, np.zeros(n, dtype=np.int64))
    bs = 256
    from torch.utils.data import DataLoader

    ds = _MultiDataset(split, [pre.transform()], [pre.size])
    workers = _num_workers(n, None)
    t0 = time.perf_counter()
    batches = [b[0][0] for b in DataLoader(ds, batch_size=bs, num_workers=workers)]
    res["decode_ips"] = n / (time.perf_counter() - t0)
    res["workers"] = workers
    for autocast in (False, True):
        m = LoadedModel(spec, net, tok, pre, "cuda", "fp", None, autocast)
        for b in batches[:2]:  # warm-up
            m.encode_image(b)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches:
            m.encode_image(b)
        torch.cuda.synchronize()
        fwd = n / (time.perf_counter() - t0)
        f = extract(m, split, batch_size=bs)
        key = "bf16" if autocast else "fp32"
        res[f"forward_ips_{key}"] = fwd
        res[f"extract_ips_{key}"] = n / f.seconds
        res[f"ratio_to_bound_{key}"] = (n / f.seconds) / min(fwd, res["decode_ips"])
    # autocast correctness on the same inputs
    x = torch.cat(batches[:4])
    m32 = LoadedModel(spec, net, tok, pre, "cuda", "fp", None, False)
    m16 = LoadedModel(spec, net, tok, pre, "cuda", "fp", None, True)
    f32 = m32.encode_image(x).cpu().numpy()
    f16 = m16.encode_image(x).cpu().numpy()
    cos = (f32 * f16).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(f16, axis=1)
    res["autocast_feature_cosine_min"] = float(cos.min())
    res["autocast_feature_cosine_mean"] = float(cos.mean())
    res["autocast_dtype_out"] = str(m16.encode_image(x[:2]).dtype)
    names = [f"class {i}" for i in range(100)]
    templates = ["a photo of a {c}.", "a picture of a {c}."]
    w32 = build_classifier(lambda t: m32.encode_text(t).cpu(), names, templates)
    w16 = build_classifier(lambda t: m16.encode_text(t).cpu(), names, templates)
    p32 = (f32 / np.linalg.norm(f32, axis=1, keepdims=True)) @ w32
    p16 = (f16 / np.linalg.norm(f16, axis=1, keepdims=True)) @ w16
    res["autocast_zeroshot_top1_agreement"] = float((p32.argmax(1) == p16.argmax(1)).mean())
    res["autocast_text_cosine_min"] = float((w32 * w16).sum(0).min())
    text = json.dumps(res, indent=2)
    (out / "gpu_check.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
