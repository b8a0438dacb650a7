"""Model specs -> loaded encoders.

``load_model(spec, device)`` returns a :class:`LoadedModel`: an image encoder, a text encoder,
the model's preprocessing and, where the suite gives one, a binary task head.  Everything the
rest of the harness needs from a model goes through this small interface, so a new checkpoint
format is one module in this package plus one entry in ``_CHECKPOINT_FORMATS``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.errors import ModelError
from harness.models.preprocess import Preprocess, build_preprocess
from harness.suite import ModelSpec


@dataclass
class Head:
    """Binary task head on the L2-normalised image embedding; ``score`` = P(bona fide).

    ``polarity = "attack"`` means the head's class 1 is *attack*: the score is flipped here,
    once, so everything downstream sees higher = bona fide.
    """

    weight: np.ndarray  # [2, D]
    bias: np.ndarray    # [2]
    polarity: str = "bonafide"

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        logits = f @ self.weight.astype(np.float64).T + self.bias.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p1 = p[:, 1] / p.sum(axis=1)
        return 1.0 - p1 if self.polarity == "attack" else p1

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.weight, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.bias, dtype=np.float32).tobytes())
        h.update(self.polarity.encode())
        return h.hexdigest()[:16]


class LoadedModel:
    """An open_clip model on a device, with its preprocessing and optional head."""

    def __init__(self, spec: ModelSpec, model: Any, tokenizer: Callable, preprocess: Preprocess,
                 device: str, fingerprint: str, head: Head | None = None, autocast: bool = False):
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.fingerprint = fingerprint      # weights identity (image and text towers)
        self.head = head
        self.autocast = autocast

    @property
    def id(self) -> str:
        return self.spec.id

    def _ctx(self):
        import contextlib

        import torch

        if self.autocast and str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_image(self, images):
        """float32 [B, D] image embeddings, not normalised."""
        import torch

        with torch.inference_mode(), self._ctx():
            out = self.model.encode_image(images.to(self.device, non_blocking=True))
        return out.float()

    def encode_text(self, texts: list[str]):
        """float32 [N, D] text embeddings, not normalised."""
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode(), self._ctx():
            out = self.model.encode_text(tokens)
        return out.float()

    def release(self) -> None:
        """Drop the weights and return GPU memory before the next model loads."""
        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------- fingerprints

_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime) for the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def weights_fingerprint(spec: ModelSpec) -> str:
    """What the weights depend on: file hashes where there are files, else arch + tag."""
    h = hashlib.sha256()
    h.update(f"arch={spec.arch}|pretrained={spec.pretrained}|format={spec.checkpoint_format}".encode())
    h.update(f"|lora={spec.lora}|polarity={spec.score_polarity}".encode())
    files: list[str] = []
    if spec.arch.startswith("local-dir:"):
        d = spec.arch[len("local-dir:"):]
        if os.path.isdir(d):
            files += sorted(os.path.join(d, f) for f in os.listdir(d)
                            if os.path.isfile(os.path.join(d, f)))
    for p in (spec.pretrained, spec.checkpoint, spec.head):
        if p and os.path.isfile(p):
            files.append(p)
    for f in files:
        h.update(f"|{os.path.basename(f)}={file_sha256(f)}".encode())
    return h.hexdigest()[:24]


# ------------------------------------------------------------------------------ loading

def _create_open_clip(spec: ModelSpec, device: str):
    import open_clip

    pretrained = None if spec.arch.startswith(("local-dir:", "hf-hub:")) else spec.pretrained
    try:
        model, _, _ = open_clip.create_model_and_transforms(spec.arch, pretrained=pretrained,
                                                            device="cpu")
    except FileNotFoundError as e:
        raise ModelError(f"{spec.source}: [models.{spec.id}] arch = {spec.arch!r}: {e}") from None
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        hint = ""
        if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in msg.lower() or "download" in msg.lower():
            hint = ("; the weights are not in the local cache: run once with network access "
                    "(open_clip downloads them to ~/.cache/huggingface), or set "
                    "pretrained = '/path/to/weights.pt'")
        raise ModelError(f"{spec.source}: [models.{spec.id}] arch = {spec.arch!r}, "
                         f"pretrained = {spec.pretrained!r}: {msg}{hint}") from None
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return model, tokenizer


def _open_clip_preprocess_cfg(model) -> dict:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    return dict(cfg)


def load_model(spec: ModelSpec, device: str = "cpu", autocast: bool = False) -> LoadedModel:
    """Load ``spec`` onto ``device``; raises :class:`ModelError` with a one-line reason."""
    model, tokenizer = _create_open_clip(spec, device)
    if spec.checkpoint:
        loader = _CHECKPOINT_FORMATS.get(spec.checkpoint_format)
        if loader is None:
            raise ModelError(f"{spec.source}: [models.{spec.id}] checkpoint_format = "
                             f"{spec.checkpoint_format!r} is not supported")
        loader(spec, model)
    head = load_head(spec) if spec.head else None
    model.eval().to(device)
    pre = build_preprocess(spec.preprocess, _open_clip_preprocess_cfg(model))
    return LoadedModel(spec, model, tokenizer, pre, device, weights_fingerprint(spec), head, autocast)


def _load_open_clip_checkpoint(spec: ModelSpec, model) -> None:
    from harness.models.checkpoints import load_open_clip_checkpoint

    load_open_clip_checkpoint(spec, model)


def _load_clip_lora_checkpoint(spec: ModelSpec, model) -> None:
    from harness.models.clip_lora import load_clip_lora_checkpoint

    load_clip_lora_checkpoint(spec, model)


def load_head(spec: ModelSpec) -> Head:
    from harness.models.checkpoints import read_head

    w, b = read_head(spec)
    return Head(w, b, spec.score_polarity)


_CHECKPOINT_FORMATS: dict[str, Callable[[ModelSpec, Any], None]] = {
    "open_clip": _load_open_clip_checkpoint,
    "clip-lora": _load_clip_lora_checkpoint,
}


def describe(spec: ModelSpec) -> dict:
    return json.loads(json.dumps({"arch": spec.arch, "pretrained": spec.pretrained,
                                  "checkpoint": spec.checkpoint}))
