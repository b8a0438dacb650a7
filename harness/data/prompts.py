"""Class names and prompt templates for zero-shot classification.

Class names, first match wins:

1. the suite option ``classnames = "FILE"``: a JSON list of strings, a JSON object keyed by
   prompt key (e.g. a CLIP_benchmark ``*_classnames.json`` in another language; the key is
   ``prompts`` or else ``format``), or a text file with one name per line (blank lines skipped);
2. the vendored CLIP_benchmark ``en_classnames.json`` under the prompt key ``spec.prompts or
   spec.format`` (``imagenetv2`` reads the ``imagenet1k`` entry), matched to the dataset's
   classes by position;
3. the dataset's own class list, cleaned by the key's rule (``food101``: ``_`` -> space;
   ``sun397``: ``_`` and ``/`` -> spaces; everything else, ``imagefolder`` included: as is).

This is the rule of PROTOCOLS.md section 2: mnist, flowers, gtsrb, country211 and imagenet1k /
imagenetv2 take the JSON names; cifar10/100, cars, fgvc_aircraft, dtd, stl10 and renderedsst2
have no JSON entry and keep their class list.  A list whose length differs from the dataset's
class count raises :class:`DataError` naming both numbers and the file or key.

Templates (each with a ``{c}`` placeholder), first match wins: the suite option
``templates = "FILE"`` (same file forms); the dataset's own templates where its format ships
them (:data:`FORMAT_TEMPLATES`, e.g. ``wds``'s ``zeroshot_classification_templates.txt``) unless
the suite sets ``prompts``; the vendored ``en_zeroshot_classification_templates.json`` under the
prompt key (imagenetv2 -> imagenet1k); else the 80 ``imagenet1k`` templates of CLIP.

So ``format = "imagefolder"`` with ``prompts = "mnist"`` gets the MNIST names and template.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable

from harness.errors import DataError

_HERE = Path(__file__).resolve().parent
CLASSNAMES_JSON = _HERE / "en_classnames.json"
TEMPLATES_JSON = _HERE / "en_zeroshot_classification_templates.json"

# Prompt keys that read another key's vendored entries.
ALIASES = {"imagenetv2": "imagenet1k", "imagenet-v2": "imagenet1k", "imagenet": "imagenet1k"}
DEFAULT_TEMPLATES_KEY = "imagenet1k"

# How a dataset's own class list becomes prompt names where the JSON has no entry.
CLEAN: dict[str, Callable[[str], str]] = {
    "food101": lambda c: c.replace("_", " "),
    "sun397": lambda c: c.replace("_", " ").replace("/", " "),
}


# Formats whose files carry their own templates: format -> f(spec) -> (templates, where) or None.
FORMAT_TEMPLATES: dict[str, Callable[..., tuple[list[str], str] | None]] = {}


def _format_templates(spec) -> tuple[list[str], str] | None:
    from harness.data.base import formats

    formats()  # every format module registered (they fill FORMAT_TEMPLATES)
    own = FORMAT_TEMPLATES.get(spec.format)
    return own(spec) if own is not None and not spec.prompts else None


def prompt_key(spec) -> str:
    key = spec.prompts or spec.format
    return ALIASES.get(key, key)


def _keys(spec) -> tuple[str, ...]:
    """Keys looked up in a user's JSON object: the prompts key as written, then its alias."""
    return tuple(dict.fromkeys((spec.prompts or spec.format, prompt_key(spec))))


@functools.lru_cache(maxsize=None)
def _vendored(path: Path) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def vendored_classnames(key: str) -> list[str] | None:
    """The CLIP_benchmark English class names for ``key`` (after aliases), or None."""
    names = _vendored(CLASSNAMES_JSON).get(ALIASES.get(key, key))
    return list(names) if names is not None else None


def vendored_templates(key: str) -> list[str] | None:
    t = _vendored(TEMPLATES_JSON).get(ALIASES.get(key, key))
    return list(t) if t is not None else None


@functools.lru_cache(maxsize=64)
def _read_list_file(path: str, size: int, mtime_ns: int, keys: tuple[str, ...]) -> tuple[str, ...]:
    del size, mtime_ns  # part of the cache key only
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if path.lower().endswith(".json") or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e}); expected a list of strings, an object "
                            "keyed by prompt key, or a text file with one entry per line") from None
        if isinstance(data, dict):
            key = next((k for k in keys if k in data), None)
            if key is None:
                raise DataError(f"{path}: no key {keys[0]!r} in this JSON object; it has "
                                f"{sorted(data)[:10]} (the key is the dataset's prompts or format)")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise DataError(f"{path}: expected a JSON list of strings (or an object whose "
                            f"entry {keys[0]!r} is one)")
        return tuple(data)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_list_file(path: str, keys: tuple[str, ...]) -> list[str]:
    """A JSON list / JSON object[key] / one-per-line text file, cached by path, size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: file not found (suite option classnames/templates)") from None
    return list(_read_list_file(os.fspath(path), st.st_size, st.st_mtime_ns, tuple(keys)))


def classnames_for(spec, dataset_classnames: list[str]) -> list[str]:
    """Prompt class names for ``spec``: option file, vendored JSON, or the cleaned class list."""
    n = len(dataset_classnames)
    key = prompt_key(spec)
    option = (spec.options or {}).get("classnames")
    if option:
        names = read_list_file(option, _keys(spec))
        where = f"{option} ([datasets.{spec.id}] classnames)"
    else:
        names = vendored_classnames(key)
        where = f"{CLASSNAMES_JSON.name} key {key!r}"
        if names is None:
            clean = CLEAN.get(key, lambda c: c)
            return [clean(c) for c in dataset_classnames]
    if len(names) != n:
        raise DataError(f"[datasets.{spec.id}]: {where} has {len(names)} class names but the "
                        f"dataset at {spec.root} has {n} classes; give a classnames file with "
                        f"{n} names in the dataset's class order")
    return names


def templates_for(spec) -> list[str]:
    """Prompt templates for ``spec``: option file, vendored JSON, else the imagenet1k templates."""
    option = (spec.options or {}).get("templates")
    templates: list[str] | None
    if option:
        templates = read_list_file(option, _keys(spec))
        where = f"{option} ([datasets.{spec.id}] templates)"
    elif (own := _format_templates(spec)) is not None:
        templates, where = own
    else:
        key = prompt_key(spec)
        templates = vendored_templates(key)
        where = f"{TEMPLATES_JSON.name} key {key!r}"
        if templates is None:
            templates = vendored_templates(DEFAULT_TEMPLATES_KEY)
            where = f"{TEMPLATES_JSON.name} key {DEFAULT_TEMPLATES_KEY!r}"
    if not templates:
        raise DataError(f"[datasets.{spec.id}]: {where} has no templates")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise DataError(f"[datasets.{spec.id}]: {where}: template {bad[0]!r} has no '{{c}}' "
                        f"placeholder ({len(bad)} of {len(templates)} lack it)")
    return templates
