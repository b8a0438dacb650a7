"""The format registry: format name -> ``open(spec) -> Dataset`` and the dataset types it fits.

Format modules register themselves with :func:`register_format` when imported;
:func:`formats` imports every module of :data:`FORMAT_MODULES` once.  This module imports no
format module at import time, so ``harness.data`` and ``harness.data.base`` both use it without
importing each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

# Every module listed here registers one or more formats when imported.
FORMAT_MODULES: tuple[str, ...] = (
    "harness.data.imagefolder",  # imagefolder (train/ test/ with one folder per class)
    "harness.data.classification",  # the study's 14 datasets in torchvision's layouts
    "harness.data.insightface_bin",  # InsightFace .bin verification packs
    "harness.data.lfw",  # LFW pairs.txt + image folder
    "harness.data.ijb",  # IJB-B / IJB-C meta/ + loose_crop/
    "harness.data.attack_list",  # MAD / PAD list files and per-method folders
    "harness.data.wds",  # CLIP_benchmark WebDataset shards (wds_* collection)
)

Opener = Callable[..., Any]
_FORMATS: dict[str, tuple[Opener, tuple[str, ...]]] = {}
_loaded = False


def register_format(name: str, types: Sequence[str]) -> Callable[[Opener], Opener]:
    """Decorator: register ``open(spec) -> Dataset`` as format ``name`` for dataset ``types``."""

    def deco(fn: Opener) -> Opener:
        _FORMATS[name] = (fn, tuple(types))
        return fn

    return deco


def load_all() -> None:
    """Import every format module once (a module not written yet does not break the others)."""
    global _loaded
    if _loaded:
        return
    for mod in FORMAT_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    _loaded = True


def formats() -> dict[str, tuple[Opener, tuple[str, ...]]]:
    """Every registered format: name -> (opener, dataset types)."""
    load_all()
    return dict(_FORMATS)
