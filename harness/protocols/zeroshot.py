"""Zero-shot classification (CLIP): prompts in, a class matrix out; image features in, metrics out.

The recipe is the one shared by open_clip's ``build_zero_shot_classifier`` and CLIP_benchmark:
for each class fill every template, encode the texts, L2-normalise each embedding, average them,
and L2-normalise the average.  Images are scored with ``logits = 100 * normalise(f) @ W``.

Everything here is a pure function of its inputs; nothing loads a model or a file.
:func:`classification_metrics` is shared with :mod:`harness.protocols.linear_probe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from harness.protocols import ProtocolResult

Template = str | Callable[[str], str]

_ROW_CHUNK = 8192  # rows of logits ranked at a time (bounds the memory of the comparison)


def _fill(template: Template, classname: str) -> str:
    if callable(template):
        return template(classname)
    # "{c}" (CLIP_benchmark's files) and "{}" (open_clip's format strings) both work.
    return template.format(classname, c=classname)


def _as_float_tensor(x, what: str) -> torch.Tensor:
    """A CPU float32 tensor from a tensor or array-like (real numbers only)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what} must be real numbers, got {t.dtype}")
    return t.to(device="cpu", dtype=torch.float32)


def build_classifier(
    encode_text: Callable[[list[str]], torch.Tensor | np.ndarray],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> np.ndarray:
    """Zero-shot class matrix ``W`` of shape ``[D, C]`` (float32, unit-norm columns).

    ``W[:, c] = normalise(mean_t normalise(encode_text(template_t(classname_c))))``.

    ``encode_text`` maps a list of strings to a ``[N, D]`` tensor or array (it should tokenize
    and run the text tower; it is called under ``torch.no_grad()``).  ``templates`` are strings
    with a ``{c}`` (or ``{}``) placeholder, or callables ``classname -> prompt``.
    ``batch_size`` is the most prompts passed to one ``encode_text`` call; the prompts are
    streamed (class-major order), so memory stays at ``C x D`` whatever the template count.
    """
    classnames = list(classnames)
    templates = list(templates)
    if not classnames:
        raise ValueError("zero-shot needs at least one class name, got none")
    if not templates:
        raise ValueError("zero-shot needs at least one prompt template, got none")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for t in templates:
        if not callable(t) and not isinstance(t, str):
            raise ValueError(f"a template must be a string or a callable, got {type(t).__name__}")
        if isinstance(t, str) and "{c}" not in t and "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{c}}' placeholder for the class name")
    n_t = len(templates)
    total = len(classnames) * n_t
    sums: np.ndarray | None = None
    # The per-batch arithmetic is small: numpy (float64), not torch, so that no tiny op waits
    # on a thread pool; the model's own work stays in encode_text.
    with torch.no_grad():
        for start in range(0, total, int(batch_size)):
            stop = min(start + int(batch_size), total)
            texts = [_fill(templates[k % n_t], classnames[k // n_t]) for k in range(start, stop)]
            emb = _as_float_tensor(encode_text(texts), "encode_text's output").numpy()
            if emb.ndim != 2 or emb.shape[0] != len(texts):
                raise ValueError(
                    f"encode_text returned shape {tuple(emb.shape)} for {len(texts)} "
                    f"prompts; expected [{len(texts)}, D]"
                )
            if sums is None:
                sums = np.zeros((len(classnames), emb.shape[1]))
            elif emb.shape[1] != sums.shape[1]:
                raise ValueError(
                    f"encode_text changed its output dimension from {sums.shape[1]} to {emb.shape[1]}"
                )
            emb = emb.astype(np.float64)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            np.add.at(sums, np.arange(start, stop) // n_t, emb)
    assert sums is not None
    mean = sums / n_t
    w = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(w.T, dtype=np.float32)


def _labels_array(labels, n: int, n_classes: int) -> torch.Tensor:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"got {n} feature rows but {y.shape[0]} labels")
    if y.size == 0:
        raise ValueError("cannot score an empty set of samples")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("labels must be integers")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels must be >= 0, got a label of {lo}")
    if hi >= n_classes:
        raise ValueError(
            f"labels go up to {hi} but there are only {n_classes} classes "
            f"(valid labels are 0..{n_classes - 1})"
        )
    return torch.from_numpy(y)


def classification_metrics(logits, labels) -> dict[str, float]:
    """Top-1, top-5 and mean per-class recall of ``logits [N, C]`` against ``labels [N]``.

    A sample's rank is its label's position in a stable descending sort of its logits (ties go
    to the lower class index, so top-1 agrees with ``argmax``).  ``acc1 = mean(rank < 1)``,
    ``acc5 = mean(rank < 5)`` (only when ``C >= 5``; the key is absent otherwise), and
    ``mean_per_class_recall`` is the mean over the classes present in ``labels`` of
    ``mean(rank == 0 | label == c)``.  Values are plain Python floats in [0, 1].
    """
    L = _as_float_tensor(logits, "logits")
    if L.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(L.shape)}")
    n, c = L.shape
    y = _labels_array(labels, n, c)
    ranks = torch.empty(n, dtype=torch.int64)
    idx = torch.arange(c)
    for s in range(0, n, _ROW_CHUNK):
        Lc, yc = L[s : s + _ROW_CHUNK], y[s : s + _ROW_CHUNK]
        t = Lc.gather(1, yc[:, None])
        ahead = (Lc > t) | ((Lc == t) & (idx[None, :] < yc[:, None]))
        ranks[s : s + _ROW_CHUNK] = ahead.sum(1)
    correct = (ranks == 0).double()
    out = {"acc1": float(correct.mean())}
    if c >= 5:
        out["acc5"] = float((ranks < 5).double().mean())
    counts = torch.bincount(y, minlength=c).double()
    hits = torch.bincount(y, weights=correct, minlength=c)
    present = counts > 0
    out["mean_per_class_recall"] = float((hits[present] / counts[present]).mean())
    return out


def evaluate(image_features, labels, classifier) -> ProtocolResult:
    """Zero-shot metrics: ``logits = 100 * normalise(image_features) @ classifier``.

    ``image_features [N, D]``, ``labels [N]`` (ints in ``0..C-1``), ``classifier [D, C]`` (as
    returned by :func:`build_classifier`).  Returns ``{"acc1", "acc5", "mean_per_class_recall"}``
    (``acc5`` only when ``C >= 5``) as plain floats; see :func:`classification_metrics`.
    Raises ``ValueError`` on a feature-dimension mismatch or a label outside ``0..C-1``.
    """
    f = _as_float_tensor(image_features, "image features")
    w = _as_float_tensor(classifier, "classifier")
    if w.ndim != 2:
        raise ValueError(f"classifier must be [D, C], got shape {tuple(w.shape)}")
    if f.ndim != 2:
        raise ValueError(f"image features must be [N, D], got shape {tuple(f.shape)}")
    if f.shape[1] != w.shape[0]:
        raise ValueError(
            f"image features have dimension {f.shape[1]} but the classifier "
            f"expects {w.shape[0]} (classifier shape {tuple(w.shape)} is [D, C])"
        )
    if not (bool(torch.isfinite(f).all()) and bool(torch.isfinite(w).all())):
        raise ValueError("image features or classifier contain NaN or infinite values")
    _labels_array(labels, f.shape[0], w.shape[1])  # validate before the matmul
    logits = 100.0 * torch.nn.functional.normalize(f, dim=-1) @ w
    return ProtocolResult(classification_metrics(logits, labels), {})
