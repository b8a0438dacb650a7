"""Dataset specs -> samples.  One small module per family, registered by format name."""

from __future__ import annotations

import importlib

from harness.data.base import Dataset, Split, decode_image, formats, register_format  # noqa: F401

# Every module listed here registers one or more formats when imported.
_FORMAT_MODULES = (
    "harness.data.imagefolder",      # imagefolder (train/ test/ with one folder per class)
    "harness.data.classification",   # the study's 14 datasets in torchvision's layouts
    "harness.data.insightface_bin",  # InsightFace .bin verification packs
    "harness.data.lfw",              # LFW pairs.txt + image folder
    "harness.data.ijb",              # IJB-B / IJB-C meta/ + loose_crop/
    "harness.data.attack_list",      # MAD / PAD list files and per-method folders
    "harness.data.wds",              # CLIP_benchmark WebDataset shards (wds_* collection)
)

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _FORMAT_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a module not written yet must not break the others
            if e.name != mod:
                raise
    _loaded = True


def open_dataset(spec) -> Dataset:
    """Open the dataset described by a :class:`harness.suite.DatasetSpec`."""
    from harness.errors import SuiteError

    table = formats()
    if spec.format not in table:
        raise SuiteError(
            f"{spec.source}: [datasets.{spec.id}] format = {spec.format!r} is unknown; "
            f"expected one of {sorted(table)}"
        )
    opener, _types = table[spec.format]
    return opener(spec)
