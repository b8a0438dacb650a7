"""Per-model preprocessing: input size, resize implementation, interpolation, mean/std, channel order.

Defaults come from the open_clip model's own config; the suite's ``preprocess`` table (a named
``preset`` and/or explicit fields) overrides them field by field.

The resize is done by the library the model was trained with, so that a family's own evaluation
pipeline can be reproduced bit for bit (``resize_backend``):

- ``"pil"`` (default): ``PIL.Image.resize`` -- what ``torchvision.transforms.Resize`` does to a PIL
  image, hence open_clip's, CLIP_benchmark's, FRoundation's training and MADation's pipelines.
  PIL always widens its filter when it shrinks (antialiasing is always on).
- ``"torchvision"``: ``torchvision.transforms.Resize`` on a uint8 ``[3, H, W]`` tensor (the object
  ``torchvision.io.decode_image`` gives); ``antialias`` chooses torchvision's antialiased or plain
  kernel.
- ``"opencv"``: ``cv2.resize`` on the uint8 ``H x W x 3`` array (albumentations' ``Resize``,
  FoundPAD's pipeline; mxnet's ``resize_short``, FRoundation's ``.bin`` evaluation).  cv2 never
  antialiases; ``interpolation = "area"`` is its filtered downscale.  Needs the ``opencv`` extra.

After the resize: ``resize = "shortest"`` centre-crops to a square (torchvision's ``CenterCrop``),
the uint8 pixels become floats in [0, 1] (``/ 255``, as ``ToTensor``), ``channel_order = "bgr"``
reverses the channels, then ``(x - mean) / std``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from harness.data.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from harness.errors import ModelError
from harness.suite import PreprocessSpec

HALF = (0.5, 0.5, 0.5)

PRESETS = {
    "clip": {"mean": CLIP_MEAN, "std": CLIP_STD},
    "imagenet": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "half": {"mean": HALF, "std": HALF},
}

RESIZE_BACKENDS = ("pil", "torchvision", "opencv")
# The interpolations each backend implements (names as torchvision's InterpolationMode values).
INTERPOLATIONS: dict[str, tuple[str, ...]] = {
    "pil": ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"),
    "torchvision": ("nearest", "nearest-exact", "bilinear", "bicubic"),
    "opencv": ("nearest", "nearest-exact", "bilinear", "bicubic", "area", "lanczos"),
}
ALL_INTERPOLATIONS = tuple(dict.fromkeys(i for v in INTERPOLATIONS.values() for i in v))
# antialias each backend uses when the suite does not say; None: the suite may choose.
_FIXED_ANTIALIAS = {"pil": True, "opencv": False, "torchvision": None}
OPENCV_EXTRA = (
    "resize_backend = 'opencv' needs OpenCV: pip install 'tradeoff-bench[opencv]' (or opencv-python-headless)"
)


@dataclass(frozen=True)
class Preprocess:
    size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "rgb"
    resize: str = "shortest"
    resize_backend: str = "pil"
    antialias: bool = True

    @property
    def fingerprint(self) -> str:
        """Every field (the feature cache key depends on all of them)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def transform(self) -> _Transform:
        """A picklable callable PIL.Image (RGB) -> float tensor [3, size, size]."""
        return _Transform(self)


def spec_problem(
    backend: str | None, interpolation: str | None, antialias: bool | None
) -> tuple[str, str] | None:
    """``(key, message)`` when the preprocessing keys contradict each other, else None."""
    b = backend or "pil"
    if interpolation is not None and interpolation not in INTERPOLATIONS[b]:
        return "interpolation", (
            f"resize_backend = {b!r} has no {interpolation!r} interpolation; "
            f"expected one of {', '.join(map(repr, INTERPOLATIONS[b]))}"
        )
    fixed = _FIXED_ANTIALIAS[b]
    if antialias is not None and fixed is not None and antialias != fixed:
        why = (
            "PIL always antialiases when it shrinks; use resize_backend = 'torchvision' or "
            "'opencv' for a plain kernel"
            if b == "pil"
            else "cv2.resize never antialiases; interpolation = 'area' is OpenCV's filtered downscale"
        )
        return "antialias", f"resize_backend = {b!r} cannot do antialias = {str(antialias).lower()}: {why}"
    return None


_CV2_FLAGS = {
    "nearest": "INTER_NEAREST",
    "nearest-exact": "INTER_NEAREST_EXACT",
    "bilinear": "INTER_LINEAR",
    "bicubic": "INTER_CUBIC",
    "area": "INTER_AREA",
    "lanczos": "INTER_LANCZOS4",
}


def _shortest_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side = size, the long side truncated (torchvision's rule)."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


class _Transform:
    def __init__(self, p: Preprocess):
        from torchvision import transforms as T

        self.p = p
        self.normalize = T.Normalize(p.mean, p.std)
        self.cv2_flag = -1
        self.resize: Any = None
        if p.resize_backend == "opencv":
            try:
                import cv2
            except ImportError:
                raise ModelError(OPENCV_EXTRA) from None
            self.cv2_flag = int(getattr(cv2, _CV2_FLAGS[p.interpolation]))
        else:
            interp = T.InterpolationMode(p.interpolation)
            size = (p.size, p.size) if p.resize == "squash" else p.size
            ops: list = [T.Resize(size, interpolation=interp, antialias=p.antialias)]
            if p.resize != "squash":
                ops.append(T.CenterCrop(p.size))
            self.resize = T.Compose(ops)

    def pixels(self, img) -> Any:
        """Resized (and cropped) image as float [3, size, size] in [0, 1], in the model's channel
        order, before normalisation: exactly uint8 / 255."""
        import numpy as np
        import torch
        from torchvision.transforms import functional as F

        if img.mode != "RGB":
            img = img.convert("RGB")
        p = self.p
        if p.resize_backend == "pil":
            x = F.to_tensor(self.resize(img))
        elif p.resize_backend == "torchvision":
            x = self.resize(F.pil_to_tensor(img)).float().div(255)
        else:
            import cv2

            a = np.asarray(img)
            h, w = a.shape[:2]
            nh, nw = (p.size, p.size) if p.resize == "squash" else _shortest_side_size(h, w, p.size)
            a = cv2.resize(a, (nw, nh), interpolation=self.cv2_flag)
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
            if p.resize != "squash":
                t = F.center_crop(t, [p.size, p.size])
            x = t.float().div(255)
        if p.channel_order == "bgr":
            # The model was trained on BGR input (e.g. cv2.imread without conversion): reorder
            # the channels (resizing works per channel, so before or after is the same);
            # mean/std are given in the model's channel order.
            x = x.flip(0)
        return x

    def __call__(self, img):
        return self.normalize(self.pixels(img))


def build_preprocess(
    spec: PreprocessSpec, open_clip_cfg: dict | None = None, where: str = "preprocess"
) -> Preprocess:
    """The resolved preprocessing; ``where`` (e.g. ``suite.toml: [models.x] preprocess``) prefixes
    errors: contradicting keys, or ``resize_backend = "opencv"`` without OpenCV installed."""
    cfg = dict(open_clip_cfg or {})
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        size = int(size[0])
    base: dict[str, Any] = {
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
    backend = spec.resize_backend or "pil"
    base["resize_backend"] = backend
    fixed = _FIXED_ANTIALIAS[backend]
    base["antialias"] = fixed if fixed is not None else (True if spec.antialias is None else spec.antialias)
    bad = spec_problem(backend, base["interpolation"], spec.antialias)
    if bad is not None:
        raise ModelError(f"{where} {bad[0]}: {bad[1]}")
    if backend == "opencv":
        import importlib.util

        if importlib.util.find_spec("cv2") is None:
            raise ModelError(f"{where}: {OPENCV_EXTRA}")
    return Preprocess(**base)
