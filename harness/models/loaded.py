"""The loaded encoder: an open_clip model on a device, built lazily, with its preprocessing."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from harness.errors import ModelError
from harness.models.head import Head
from harness.models.preprocess import Preprocess
from harness.suite import ModelSpec

AUTOCAST_DTYPES = ("bf16", "fp16")


def autocast_name(autocast: str | bool | None) -> str | None:
    """``--autocast``'s value as ``"bf16"``, ``"fp16"`` or None (``True`` means bf16)."""
    if autocast is None or autocast is False:
        return None
    if autocast is True:
        return "bf16"
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast: expected one of {', '.join(AUTOCAST_DTYPES)}, got {autocast!r}")
    return str(autocast)


class LoadedModel:
    """An open_clip model on a device, with its preprocessing and optional head.

    With a ``factory`` the network is built on first use (``model``/``tokenizer``/``encode_*``):
    a run whose features and text classifiers are all cached never builds it.  ``on_load``
    is called with the model id when the network is built.

    ``autocast`` (``"bf16"``, ``"fp16"``; ``True`` = bf16) applies on CUDA only: on other devices
    the model runs fp32 (CPU autocast changes zero-shot results).  :attr:`compute_dtype` says
    what the forward passes actually run in; :attr:`fingerprint` includes it.
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        tokenizer: Callable | None,
        preprocess: Preprocess,
        device: str,
        fingerprint: str,
        head: Head | None = None,
        autocast: str | bool | None = None,
        factory: Callable[[], LoadedModel] | None = None,
        on_load: Callable[[str], None] | None = None,
    ):
        self.spec = spec
        self._model = model
        self._tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.weights_fingerprint = fingerprint  # weights identity (image and text towers)
        self.head = head
        self.autocast = autocast_name(autocast)
        self._factory = factory
        self._error: Exception | None = None
        self.on_load = on_load

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def compute_dtype(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``: the dtype the forward passes run in."""
        if self.autocast is not None and str(self.device).startswith("cuda"):
            return self.autocast
        return "fp32"

    @property
    def fingerprint(self) -> str:
        """What the embeddings depend on besides the preprocessing: the weights, and the compute
        dtype when it is not fp32 (fp32 keys are the weights' fingerprint alone)."""
        dt = self.compute_dtype
        return self.weights_fingerprint if dt == "fp32" else f"{self.weights_fingerprint}-{dt}"

    @property
    def is_built(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        if self._model is None and self._factory is not None:
            if self._error is not None:
                raise self._error
            try:
                built = self._factory()
            except ModelError as e:
                self._error = e
                raise
            if built.preprocess != self.preprocess:
                raise ModelError(
                    f"{self.spec.source}: [models.{self.id}]: the cached model "
                    f"description is stale (preprocessing {built.preprocess} != "
                    f"{self.preprocess}); rerun with --refresh-features"
                )
            self._model, self._tokenizer, self._factory = built._model, built._tokenizer, None
            if self.on_load is not None:
                self.on_load(self.id)
        return self._model

    @property
    def tokenizer(self):
        self.model  # noqa: B018 - builds the network (and its tokenizer) when lazy
        return self._tokenizer

    def _ctx(self):
        import contextlib

        import torch

        dt = self.compute_dtype
        if dt != "fp32":
            return torch.autocast("cuda", dtype=torch.bfloat16 if dt == "bf16" else torch.float16)
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

        self._model = self._tokenizer = self._factory = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
