"""A tiny open_clip CLIP written as a ``local-dir:`` folder with random weights (tests only)."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

TINY_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def make_tiny_clip(folder, seed=0) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CFG,
        "preprocess_cfg": {"size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                           "interpolation": "bilinear", "resize_mode": "squash"}}))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    return folder


def make_digits_imagefolder(root, n_train=4, n_test=3) -> Path:
    """scikit-learn's digits as an imagefolder tree: root/{train,test}/<digit>/*.png (16x16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = Path(root)
    counts = {}
    for img, y in zip(d.images, d.target):
        k = counts.get(y, 0)
        if k >= n_train + n_test:
            continue
        counts[y] = k + 1
        split = "train" if k < n_train else "test"
        out = root / split / str(y)
        out.mkdir(parents=True, exist_ok=True)
        arr = (img / 16.0 * 255).astype(np.uint8)
        Image.fromarray(arr).resize((16, 16), Image.NEAREST).convert("RGB").save(out / f"{k}.png")
    return root
