"""Per-model preprocessing: input size, interpolation, mean/std, channel order.

Defaults come from the open_clip model's own config; the suite's ``preprocess`` table (a named
``preset`` and/or explicit fields) overrides them field by field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from harness.data.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from harness.suite import PreprocessSpec

HALF = (0.5, 0.5, 0.5)

PRESETS = {
    "clip": {"mean": CLIP_MEAN, "std": CLIP_STD},
    "imagenet": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "half": {"mean": HALF, "std": HALF},
}


@dataclass(frozen=True)
class Preprocess:
    size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "rgb"
    resize: str = "shortest"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def transform(self):
        """A picklable callable PIL.Image (RGB) -> float tensor [3, size, size]."""
        return _Transform(self)


class _Transform:
    def __init__(self, p: Preprocess):
        from torchvision import transforms as T

        interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                  "nearest": T.InterpolationMode.NEAREST}[p.interpolation]
        if p.resize == "squash":
            resize = [T.Resize((p.size, p.size), interpolation=interp, antialias=True)]
        else:
            resize = [T.Resize(p.size, interpolation=interp, antialias=True), T.CenterCrop(p.size)]
        self.p = p
        self.resize = T.Compose(resize + [T.ToTensor()])
        self.normalize = T.Normalize(p.mean, p.std)

    def __call__(self, img):
        if img.mode != "RGB":
            img = img.convert("RGB")
        x = self.resize(img)
        if self.p.channel_order == "bgr":
            # The model was trained on BGR input (e.g. cv2.imread without conversion): reorder
            # the channels first; mean/std are given in the model's channel order.
            x = x.flip(0)
        return self.normalize(x)


def build_preprocess(spec: PreprocessSpec, open_clip_cfg: dict | None = None) -> Preprocess:
    cfg = dict(open_clip_cfg or {})
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        size = int(size[0])
    base = {
        "size": int(size),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": tuple(cfg.get("mean", CLIP_MEAN)),
        "std": tuple(cfg.get("std", CLIP_STD)),
        "channel_order": "rgb",
        "resize": "squash" if cfg.get("resize_mode") == "squash" else "shortest",
    }
    if spec.preset:
        base.update(PRESETS[spec.preset])
    for k in ("size", "interpolation", "mean", "std", "resize"):
        v = getattr(spec, k)
        if v is not None:
            base[k] = v
    base["channel_order"] = spec.channel_order
    return Preprocess(**base)
