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

Safety checks:

* an option file must be a regular file (a FIFO is never waited on) of at most
  :data:`~harness.data.files.OPTION_FILE_LIMIT` bytes (1 MB), else a one-line DataError;
* when the dataset's own class names are words (each has three letters or more and is not an
  ImageNet wnid) and the vendored names of the prompt key disagree with them (compared case-
  and separator-insensitively, position by position), labels would be named by position with
  the wrong words (folders ``zero``..``nine`` with ``prompts = "mnist"`` scored below chance):
  that is a one-line DataError showing both lists, unless ``classnames`` is given explicitly.

:func:`prompts_for` returns the names and templates used with where each came from, for the
case's details (:meth:`Prompts.details`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data.files import read_option_text
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


@functools.cache
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
    text = read_option_text(path, "classnames/templates file")
    stripped = text.lstrip()
    if path.lower().endswith(".json") or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: not valid JSON ({e}); expected a list of strings, an object "
                "keyed by prompt key, or a text file with one entry per line"
            ) from None
        if isinstance(data, dict):
            key = next((k for k in keys if k in data), None)
            if key is None:
                raise DataError(
                    f"{path}: no key {keys[0]!r} in this JSON object; it has "
                    f"{sorted(data)[:10]} (the key is the dataset's prompts or format)"
                )
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise DataError(
                f"{path}: expected a JSON list of strings (or an object whose entry {keys[0]!r} is one)"
            )
        return tuple(data)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_list_file(path: str, keys: tuple[str, ...]) -> list[str]:
    """A JSON list / JSON object[key] / one-per-line text file, cached by path, size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        raise DataError(f"{path}: file not found (suite option classnames/templates)") from None
    return list(_read_list_file(os.fspath(path), st.st_size, st.st_mtime_ns, tuple(keys)))


_WNID = re.compile(r"n\d{8}")


def _norm(name: str) -> str:
    return " ".join(re.split(r"[\s_\-/]+", name.strip().lower()))


def _is_word(name: str) -> bool:
    name = str(name)
    return sum(ch.isalpha() for ch in name) >= 3 and not _WNID.fullmatch(name)


def _short(names: list[str], k: int = 10) -> str:
    shown = ", ".join(names[:k])
    return f"[{shown}{', ...' if len(names) > k else ''}] ({len(names)})"


def _classnames(spec, dataset_classnames: list[str]) -> tuple[list[str], str]:
    n = len(dataset_classnames)
    key = prompt_key(spec)
    option = (spec.options or {}).get("classnames")
    names: list[str] | None
    if option:
        names = read_list_file(option, _keys(spec))
        where = f"{option} ([datasets.{spec.id}] classnames)"
    else:
        names = vendored_classnames(key)
        where = f"{CLASSNAMES_JSON.name} key {key!r}"
        if names is None:
            clean = CLEAN.get(key, lambda c: c)
            return [clean(c) for c in dataset_classnames], f"the dataset's classes (key {key!r})"
    if len(names) != n:
        raise DataError(
            f"[datasets.{spec.id}]: {where} has {len(names)} class names but the "
            f"dataset at {spec.root} has {n} classes; give a classnames file with "
            f"{n} names in the dataset's class order"
        )
    own = [str(c) for c in dataset_classnames]
    if not option and all(_is_word(c) for c in own) and [_norm(c) for c in own] != [_norm(c) for c in names]:
        raise DataError(
            f"[datasets.{spec.id}]: the dataset's classes are words {_short(own)} but "
            f"the class names of {where} are {_short(names)}; they would be matched "
            f"by position -- give classnames = FILE (one name per class, in the "
            f"dataset's order) or a prompts key whose names match"
        )
    return list(names), where


def classnames_for(spec, dataset_classnames: list[str]) -> list[str]:
    """Prompt class names for ``spec``: option file, vendored JSON, or the cleaned class list."""
    return _classnames(spec, dataset_classnames)[0]


def templates_for(spec) -> list[str]:
    """Prompt templates for ``spec``: option file, vendored JSON, else the imagenet1k templates."""
    return _templates(spec)[0]


def _templates(spec) -> tuple[list[str], str]:
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
    assert templates is not None
    if not templates:
        raise DataError(f"[datasets.{spec.id}]: {where} has no templates")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise DataError(
            f"[datasets.{spec.id}]: {where}: template {bad[0]!r} has no '{{c}}' "
            f"placeholder ({len(bad)} of {len(templates)} lack it)"
        )
    return list(templates), where


@dataclass(frozen=True)
class Prompts:
    """The class names and templates a zero-shot case uses, and where each came from."""

    classnames: list[str]
    templates: list[str]
    classnames_source: str
    templates_source: str

    def details(self) -> dict[str, Any]:
        """For a case's details: ``classnames``, ``templates`` and their sources."""
        return {
            "classnames": list(self.classnames),
            "templates": list(self.templates),
            "classnames_source": self.classnames_source,
            "templates_source": self.templates_source,
        }


def prompts_for(spec, dataset_classnames: list[str]) -> Prompts:
    """:func:`classnames_for` and :func:`templates_for` together, with their sources."""
    names, names_from = _classnames(spec, dataset_classnames)
    templates, templates_from = _templates(spec)
    return Prompts(names, templates, names_from, templates_from)
