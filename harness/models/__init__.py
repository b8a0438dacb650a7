"""Model specs -> loaded encoders.

``load_model(spec, device)`` returns a :class:`LoadedModel`: an image encoder, a text encoder,
the model's preprocessing and, where the suite gives one, a binary task head.  Everything the
rest of the harness needs from a model goes through this small interface.

One module per concern:

- :mod:`~harness.models.loading`: open_clip creation, pretrained tags, weights files,
  checkpoint formats (``_CHECKPOINT_FORMATS``), :func:`load_model`, :func:`open_model`;
- :mod:`~harness.models.loaded`: :class:`LoadedModel` (lazy build, autocast, encoding);
- :mod:`~harness.models.head`: the binary task head (:class:`Head`, :func:`load_head`);
- :mod:`~harness.models.description`: weights fingerprints (:func:`file_sha256`) and the cached
  model descriptions that let a warm run skip building the network;
- :mod:`~harness.models.preprocess`: per-model preprocessing;
- :mod:`~harness.models.checkpoints`, :mod:`~harness.models.clip_lora`: reading weight files.
"""

from __future__ import annotations

from harness.models.description import LOADER_VERSION, file_sha256, weights_fingerprint
from harness.models.head import Head, load_head
from harness.models.loaded import LoadedModel
from harness.models.loading import load_model, open_model

__all__ = [
    "LOADER_VERSION",
    "Head",
    "LoadedModel",
    "file_sha256",
    "load_head",
    "load_model",
    "open_model",
    "weights_fingerprint",
]
