"""Five-point face alignment to the ArcFace 112x112 template.

A similarity transform (uniform scale, rotation, translation; no reflection) is fitted by
least squares from the five detected landmarks (left eye, right eye, nose tip, left and right
mouth corners; image x, y) to :data:`ARCFACE_TEMPLATE_112`, following Umeyama (1991): with
centred point sets ``X`` (source) and ``Y`` (destination), ``Y^T X / n = U S V^T``,
``D = diag(1, sign(det U det V))``, ``R = U D V^T``, ``s = tr(S D) / var(X)``,
``t = mean(Y) - s R mean(X)``.

Coordinates are pixel indices, with pixel ``(i, j)``'s centre at ``x = i, y = j`` (the
convention of OpenCV's ``warpAffine``, which InsightFace uses); :func:`warp_affine` converts
to PIL's convention (centres at ``i + 0.5``) so that a pure integer shift reproduces the
pixels exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from PIL import Image

from harness.data.base import decode_image
from harness.data.constants import ARCFACE_TEMPLATE_112

ALIGNED_SIZE = (112, 112)


def similarity_transform(src: Any, dst: Any) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` onto ``dst`` (both ``[n, 2]``).

    Returns the ``2x3`` matrix ``M = [s R | t]`` with ``dst ~ src @ M[:, :2].T + M[:, 2]``.
    """
    x = np.asarray(src, dtype=np.float64)
    y = np.asarray(dst, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"src and dst must both be [n, 2] with n >= 2, got {x.shape} and {y.shape}")
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    var_x = float(np.mean(np.sum(xc * xc, axis=1)))
    if var_x <= 0.0:
        raise ValueError("the source points all coincide: no similarity transform")
    cov = yc.T @ xc / len(x)
    u, sv, vt = np.linalg.svd(cov)
    d = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    r = u @ np.diag(d) @ vt
    scale = float(np.sum(sv * d)) / var_x
    t = my - scale * (r @ mx)
    return np.hstack([scale * r, t[:, None]])


def apply_transform(m: np.ndarray, pts: Any) -> np.ndarray:
    """``pts @ M[:, :2].T + M[:, 2]`` for ``[n, 2]`` points."""
    p = np.asarray(pts, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def warp_affine(
    img: Image.Image,
    m: np.ndarray,
    size: tuple[int, int] = ALIGNED_SIZE,
    resample: int = Image.Resampling.BILINEAR,
) -> Image.Image:
    """Warp ``img`` with the forward transform ``m`` (source -> output pixel indices).

    Output pixel ``p`` samples the source at ``m^-1 p``; outside the image is black (as
    ``cv2.warpAffine`` with its default constant border).
    """
    a = np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)[:2]
    lin, t = inv[:, :2], inv[:, 2]
    # PIL maps output continuous coords (centre of pixel i at i + 0.5) to input continuous
    # coords: in = inv(out - 0.5) + 0.5 = lin @ out + (t + 0.5 - lin @ [0.5, 0.5])
    t_pil = t + 0.5 - lin @ np.array([0.5, 0.5])
    data = (lin[0, 0], lin[0, 1], t_pil[0], lin[1, 0], lin[1, 1], t_pil[1])
    return img.transform(size, Image.Transform.AFFINE, data=data, resample=resample, fillcolor=(0, 0, 0))


def align_face(
    img: Image.Image,
    landmarks: Any,
    template: np.ndarray = ARCFACE_TEMPLATE_112,
    size: tuple[int, int] = ALIGNED_SIZE,
) -> Image.Image:
    """Crop and align ``img`` (RGB) from its 5 landmarks ``[5, 2]`` to a ``size`` RGB image."""
    m = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(-1, 2), template)
    return warp_affine(img.convert("RGB"), m, size)


class FivePointAligner:
    """Picklable reader: ``aligner(path) -> 112x112 RGB PIL image`` aligned from its landmarks.

    ``index`` maps each item (image path as a string) to its row of ``landmarks [M, 5, 2]``.
    """

    def __init__(
        self,
        index: Mapping[str, int],
        landmarks: np.ndarray,
        template: np.ndarray = ARCFACE_TEMPLATE_112,
        size: tuple[int, int] = ALIGNED_SIZE,
    ) -> None:
        self.index = dict(index)
        self.landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
        self.template = np.asarray(template, dtype=np.float64)
        self.size = cast("tuple[int, int]", tuple(size))

    def __call__(self, item: Any) -> Image.Image:
        row = self.index[str(item)]
        return align_face(decode_image(item), self.landmarks[row], self.template, self.size)
