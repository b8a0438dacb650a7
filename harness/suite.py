"""Suite files: TOML -> plain dataclasses, validated before any model loads.

Every structural mistake raises :class:`SuiteError` with one line naming the file, the table,
the key and the expected form.  ``${VAR}`` in a string is expanded from the environment; an
unset variable is *not* an error here: the spec remembers it (``missing_env``) and the cases that
need the value skip with a reason naming the variable.  Relative paths resolve against the
suite file's folder.

A dataset chooses its models with ``models = [...]`` and/or ``exclude_models = [...]``
(default: every model).  ``[presets.NAME]`` tables hold keys written once for a family of
models (or datasets); a model or dataset with ``preset = "NAME"`` gets them, its own keys
winning (inline tables such as ``lora`` and ``preprocess`` merge key by key).

Hostile files stop here too, one line each: bytes that are not UTF-8, nesting deeper than
:data:`MAX_DEPTH`, a file over :data:`MAX_SUITE_BYTES`, sizes outside
:data:`SIZE_RANGE`, labels over :data:`MAX_LABEL` characters, other strings over
:data:`MAX_STRING` characters.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.errors import SuiteError
from harness.protocols import PROTOCOLS, Option

DATASET_TYPES = ("classification", "verification", "ijb", "mad", "pad")
MAX_SUITE_BYTES = 4 * 1024 * 1024  # a suite file is a few kB; refuse what no suite needs
MAX_DEPTH = 32  # nesting of tables/arrays (deeper: refused before parsing)
MAX_LABEL = 200  # characters of a label, a suite name, an id
MAX_STRING = 4096  # characters of any other string (paths, prompts...)
SIZE_RANGE = (1, 4096)  # preprocess.size, in pixels
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*(?:-[A-Za-z0-9_.]+)*$")


@dataclass(frozen=True)
class LoraSpec:
    rank: int | None = None
    alpha: float | None = None
    scaling: str | None = None  # "rslora" (alpha/sqrt(r)) or "standard" (alpha/r)


@dataclass(frozen=True)
class PreprocessSpec:
    preset: str | None = None  # "clip", "imagenet", "half"
    size: int | None = None
    interpolation: str | None = None  # "bicubic", "bilinear", "nearest"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: str = "rgb"  # "rgb" or "bgr"
    resize: str | None = None  # "shortest" (resize + centre crop) or "squash"
    resize_backend: str | None = None  # "pil" (default), "torchvision" or "opencv"
    antialias: bool | None = None  # torchvision only (pil: always, opencv: never)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    arch: str
    source: str
    pretrained: str | None = None
    label: str | None = None
    checkpoint: str | None = None
    checkpoint_format: str = "open_clip"
    lora: LoraSpec = field(default_factory=LoraSpec)
    head: str | None = None
    score_polarity: str = "bonafide"
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    baseline: str | None = None
    missing_env: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        return self.label or self.id


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    type: str
    format: str
    root: str
    source: str
    protocols: tuple[str, ...]
    label: str | None = None
    prompts: str | None = None
    download: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    missing_env: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None  # the models this dataset meets (None: every model)

    @property
    def display(self) -> str:
        return self.label or self.id

    def option(self, name: str) -> Any:
        """The value of a protocol option, or its registered default."""
        if name in self.options:
            return self.options[name]
        for p in self.protocols:
            opt = PROTOCOLS[p].options.get(name)
            if opt is not None:
                return opt.default
        raise KeyError(name)


@dataclass(frozen=True)
class Gate:
    metric: str
    protocol: str | None = None
    model: str | None = None
    dataset: str | None = None
    min: float | None = None
    max: float | None = None

    def applies(self, protocol: str, model: str, dataset: str) -> bool:
        return (
            (self.protocol in (None, protocol))
            and (self.model in (None, model))
            and (self.dataset in (None, dataset))
        )


@dataclass(frozen=True)
class Suite:
    path: str
    name: str
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    gates: tuple[Gate, ...] = ()
    description: str = ""

    def models_for(self, dataset: str) -> list[str]:
        """The models that meet ``dataset`` (its ``models``/``exclude_models``), suite order."""
        chosen = self.datasets[dataset].models
        return [m for m in self.models if chosen is None or m in chosen]

    def cases(self) -> list[tuple[str, str, str]]:
        """Every (protocol, model, dataset) the suite defines, in file order."""
        out = []
        for d in self.datasets.values():
            for p in d.protocols:
                for m in self.models_for(d.id):
                    out.append((p, m, d.id))
        return out


# ------------------------------------------------------------------------------ validation


class _Ctx:
    def __init__(self, path: str, base: Path, defaults: dict[str, str] | None = None):
        self.path = path
        self.base = base
        self.variables = {**(defaults or {}), **os.environ}  # the environment wins

    def err(self, table: str, key: str | None, msg: str) -> SuiteError:
        where = f"[{table}]" + (f" {key}" if key else "")
        return SuiteError(f"{self.path}: {where}: {msg}")


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(v), type(v).__name__
    )


def _check_type(ctx: _Ctx, table: str, key: str, value: Any, types: tuple[type, ...], expected: str) -> Any:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ctx.err(table, key, f"expected {expected}, got {_type_name(value)} {value!r}")
    return value


def _expand(value: str, missing: list[str], variables: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        var = m.group(1)
        if var in variables:
            return variables[var]
        missing.append(var)
        return m.group(0)

    return _ENV.sub(sub, value)


def _path(ctx: _Ctx, value: str, missing: list[str]) -> str:
    before = len(missing)
    out = _expand(value, missing, ctx.variables)
    if len(missing) > before:
        return out
    out = os.path.expanduser(out)
    if not os.path.isabs(out):
        out = str((ctx.base / out).resolve())
    return out


def _is_path_like(value: str) -> bool:
    return "/" in value or "${" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


_MODEL_KEYS = {
    "arch": "an open_clip model name, 'local-dir:PATH' or 'hf-hub:ORG/NAME'",
    "pretrained": "an open_clip pretrained tag or a weights file",
    "label": "a display name",
    "checkpoint": "a path to fine-tuned weights",
    "checkpoint_format": "'open_clip' or 'clip-lora'",
    "lora": "a table {rank, alpha, scaling}",
    "head": "a path to a binary task head",
    "score_polarity": "'bonafide' or 'attack'",
    "preprocess": "a table {preset, size, interpolation, mean, std, channel_order, resize, "
    "resize_backend, antialias}",
    "baseline": "the id of another model in this suite",
    "preset": "the name of a [presets.NAME] table",
}
_PREPROCESS_KEYS = {
    "preset": ((str,), ("clip", "imagenet", "half")),
    "size": ((int,), None),
    "interpolation": (
        (str,),
        ("bicubic", "bilinear", "nearest", "nearest-exact", "area", "lanczos", "box", "hamming"),
    ),
    "mean": ((list,), None),
    "std": ((list,), None),
    "channel_order": ((str,), ("rgb", "bgr")),
    "resize": ((str,), ("shortest", "squash")),
    "resize_backend": ((str,), ("pil", "torchvision", "opencv")),
    "antialias": ((bool,), None),
}


def _parse_model(ctx: _Ctx, mid: str, raw: Any) -> ModelSpec:
    table = f"models.{mid}"
    if not isinstance(raw, dict):
        raise ctx.err("models", mid, f"expected a table [models.{mid}], got {_type_name(raw)}")
    for k in raw:
        if k not in _MODEL_KEYS:
            raise ctx.err(table, k, f"unknown key; expected one of {', '.join(_MODEL_KEYS)}")
    if "arch" not in raw:
        raise ctx.err(table, "arch", "missing required key; expected " + _MODEL_KEYS["arch"])
    missing: list[str] = []
    kw: dict[str, Any] = {}
    for k in ("arch", "pretrained", "label", "checkpoint", "head", "baseline"):
        if k in raw:
            kw[k] = _check_type(ctx, table, k, raw[k], (str,), _MODEL_KEYS[k])
    arch = kw["arch"]
    if arch.startswith("local-dir:"):
        kw["arch"] = "local-dir:" + _path(ctx, arch[len("local-dir:") :], missing)
    if "pretrained" in kw and _is_path_like(kw["pretrained"]):
        kw["pretrained"] = _path(ctx, kw["pretrained"], missing)
    for k in ("checkpoint", "head"):
        if k in kw:
            kw[k] = _path(ctx, kw[k], missing)
    if "checkpoint_format" in raw:
        v = _check_type(
            ctx,
            table,
            "checkpoint_format",
            raw["checkpoint_format"],
            (str,),
            _MODEL_KEYS["checkpoint_format"],
        )
        if v not in ("open_clip", "clip-lora"):
            raise ctx.err(table, "checkpoint_format", f"expected 'open_clip' or 'clip-lora', got {v!r}")
        kw["checkpoint_format"] = v
    if "score_polarity" in raw:
        v = _check_type(
            ctx, table, "score_polarity", raw["score_polarity"], (str,), _MODEL_KEYS["score_polarity"]
        )
        if v not in ("bonafide", "attack"):
            raise ctx.err(table, "score_polarity", f"expected 'bonafide' or 'attack', got {v!r}")
        kw["score_polarity"] = v
    if "lora" in raw:
        lo = _check_type(ctx, table, "lora", raw["lora"], (dict,), _MODEL_KEYS["lora"])
        lt = f"{table}.lora"
        for k in lo:
            if k not in ("rank", "alpha", "scaling"):
                raise ctx.err(lt, k, "unknown key; expected one of rank, alpha, scaling")
        rank = (
            _check_type(ctx, lt, "rank", lo["rank"], (int,), "a positive integer") if "rank" in lo else None
        )
        alpha = _check_type(ctx, lt, "alpha", lo["alpha"], (float,), "a number") if "alpha" in lo else None
        scaling = lo.get("scaling")
        if scaling is not None and scaling not in ("rslora", "standard"):
            raise ctx.err(
                lt, "scaling", f"expected 'rslora' (alpha/sqrt(r)) or 'standard' (alpha/r), got {scaling!r}"
            )
        if rank is not None and not 1 <= rank <= 4096:
            raise ctx.err(lt, "rank", f"expected an integer in 1..4096, got {rank}")
        kw["lora"] = LoraSpec(rank, alpha, scaling)
    if kw.get("checkpoint_format") == "clip-lora":
        lo = kw.get("lora", LoraSpec())
        if lo.alpha is None or lo.scaling is None:
            raise ctx.err(
                table,
                "lora",
                "checkpoint_format = 'clip-lora' needs lora = { alpha = ..., "
                "scaling = 'rslora' | 'standard' } (rank is read from the checkpoint)",
            )
        if "checkpoint" not in kw:
            raise ctx.err(table, "checkpoint", "checkpoint_format = 'clip-lora' needs a checkpoint path")
    _check_label(ctx, table, kw.get("label"))
    if "preprocess" in raw:
        pp = _check_type(ctx, table, "preprocess", raw["preprocess"], (dict,), _MODEL_KEYS["preprocess"])
        pt = f"{table}.preprocess"
        pkw: dict[str, Any] = {}
        for k, v in pp.items():
            if k not in _PREPROCESS_KEYS:
                raise ctx.err(pt, k, f"unknown key; expected one of {', '.join(_PREPROCESS_KEYS)}")
            types, choices = _PREPROCESS_KEYS[k]
            v = _check_type(
                ctx,
                pt,
                k,
                v,
                types,
                "a list of 3 numbers"
                if types == (list,)
                else (
                    "an integer" if types == (int,) else "true or false" if types == (bool,) else "a string"
                ),
            )
            if choices and v not in choices:
                raise ctx.err(pt, k, f"expected one of {', '.join(map(repr, choices))}, got {v!r}")
            if k == "size" and not SIZE_RANGE[0] <= v <= SIZE_RANGE[1]:
                raise ctx.err(
                    pt, k, f"expected an integer in {SIZE_RANGE[0]}..{SIZE_RANGE[1]} (pixels), got {v}"
                )
            if k in ("mean", "std"):
                if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                    raise ctx.err(pt, k, f"expected a list of 3 numbers, got {v!r}")
                v = tuple(float(x) for x in v)
            pkw[k] = v
        from harness.models.preprocess import spec_problem  # the backends' capabilities

        bad = spec_problem(pkw.get("resize_backend"), pkw.get("interpolation"), pkw.get("antialias"))
        if bad is not None:
            raise ctx.err(pt, bad[0], bad[1])
        kw["preprocess"] = PreprocessSpec(**pkw)
    return ModelSpec(id=mid, source=ctx.path, missing_env=tuple(dict.fromkeys(missing)), **kw)


_DATASET_KEYS = {
    "type": "one of " + ", ".join(DATASET_TYPES),
    "format": "a dataset format name",
    "root": "the dataset's folder (or file)",
    "protocols": "a list of protocol names",
    "label": "a display name",
    "prompts": "a classnames/templates key such as 'cifar10'",
    "download": "a boolean",
    "models": "a list of model ids: only these models meet this dataset",
    "exclude_models": "a list of model ids that do not meet this dataset",
    "preset": "the name of a [presets.NAME] table",
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_list(ctx: _Ctx, table: str, key: str, value: Any, model_ids: list[str]) -> list[str]:
    v = _check_type(ctx, table, key, value, (list,), _DATASET_KEYS[key])
    for m in v:
        if not isinstance(m, str) or m not in model_ids:
            raise ctx.err(
                table,
                key,
                f"{m!r} names no model{_did_you_mean(str(m), model_ids)}; "
                f"expected ids among {', '.join(model_ids)}",
            )
    return list(v)


def _parse_dataset(
    ctx: _Ctx,
    did: str,
    raw: Any,
    model_ids: list[str] | None = None,
    format_types: dict[str, tuple[str, ...]] | None = None,
) -> DatasetSpec:
    """``format_types``: format name -> dataset types it fits (the format registry)."""
    table = f"datasets.{did}"
    if not isinstance(raw, dict):
        raise ctx.err("datasets", did, f"expected a table [datasets.{did}], got {_type_name(raw)}")
    for k in ("type", "format", "root", "protocols"):
        if k not in raw:
            raise ctx.err(table, k, "missing required key; expected " + _DATASET_KEYS[k])
    dtype = _check_type(ctx, table, "type", raw["type"], (str,), _DATASET_KEYS["type"])
    if dtype not in DATASET_TYPES:
        raise ctx.err(table, "type", f"expected one of {', '.join(DATASET_TYPES)}, got {dtype!r}")
    protocols = _check_type(ctx, table, "protocols", raw["protocols"], (list,), _DATASET_KEYS["protocols"])
    if not protocols:
        raise ctx.err(table, "protocols", "expected at least one protocol")
    for p in protocols:
        if p not in PROTOCOLS:
            raise ctx.err(
                table, "protocols", f"unknown protocol {p!r}; expected one of {', '.join(PROTOCOLS)}"
            )
        if dtype not in PROTOCOLS[p].types:
            raise ctx.err(
                table,
                "protocols",
                f"protocol {p!r} does not fit type = {dtype!r}; it needs type "
                + " or ".join(repr(t) for t in PROTOCOLS[p].types),
            )
    if len(set(protocols)) != len(protocols):
        raise ctx.err(table, "protocols", f"duplicate protocol in {protocols!r}")
    allowed: dict[str, Option] = {}
    for p in protocols:
        allowed.update(PROTOCOLS[p].options)
    options: dict[str, Any] = {}
    for k, v in raw.items():
        if k in _DATASET_KEYS:
            continue
        if k not in allowed:
            expected = list(_DATASET_KEYS) + sorted(allowed)
            raise ctx.err(
                table, k, f"unknown key for protocols {protocols}; expected one of {', '.join(expected)}"
            )
        opt = allowed[k]
        v = _check_type(ctx, table, k, v, opt.types, opt.expected())
        if opt.choices and v not in opt.choices:
            raise ctx.err(table, k, f"expected {opt.expected()}, got {v!r}")
        options[k] = v
    missing: list[str] = []
    fmt = _check_type(ctx, table, "format", raw["format"], (str,), _DATASET_KEYS["format"])
    if format_types is not None:
        if fmt not in format_types:
            raise ctx.err(
                table,
                "format",
                f"unknown format {fmt!r}"
                f"{_did_you_mean(fmt, sorted(format_types))}; expected one of "
                f"{', '.join(sorted(format_types))}",
            )
        if dtype not in format_types[fmt]:
            fitting = sorted(f for f, ts in format_types.items() if dtype in ts)
            raise ctx.err(
                table,
                "format",
                f"format {fmt!r} does not fit type = {dtype!r} (it reads "
                f"{' or '.join(map(repr, format_types[fmt]))} data); formats for "
                f"{dtype!r}: {', '.join(fitting)}",
            )
    root = _path(ctx, _check_type(ctx, table, "root", raw["root"], (str,), _DATASET_KEYS["root"]), missing)
    for k in ("classnames", "templates"):
        if k in options:
            options[k] = _path(ctx, options[k], missing)
    kw: dict[str, Any] = {}
    for k in ("label", "prompts"):
        if k in raw:
            kw[k] = _check_type(ctx, table, k, raw[k], (str,), _DATASET_KEYS[k])
    _check_label(ctx, table, kw.get("label"))
    ids = list(model_ids or [])
    if "models" in raw or "exclude_models" in raw:
        chosen = _model_list(ctx, table, "models", raw["models"], ids) if "models" in raw else ids
        if "exclude_models" in raw:
            out = _model_list(ctx, table, "exclude_models", raw["exclude_models"], ids)
            chosen = [m for m in chosen if m not in out]
        if not chosen:
            raise ctx.err(table, "models", "chooses no model; expected at least one model id")
        kw["models"] = tuple(m for m in ids if m in chosen)
    if "download" in raw:
        kw["download"] = _check_type(ctx, table, "download", raw["download"], (bool,), "a boolean")
    return DatasetSpec(
        id=did,
        type=dtype,
        format=fmt,
        root=root,
        source=ctx.path,
        protocols=tuple(protocols),
        options=options,
        missing_env=tuple(dict.fromkeys(missing)),
        **kw,
    )


def _check_label(ctx: _Ctx, table: str, label: str | None, key: str = "label") -> None:
    if label is not None and len(label) > MAX_LABEL:
        raise ctx.err(table, key, f"expected at most {MAX_LABEL} characters, got {len(label)}")


def _check_strings(ctx: _Ctx, value: Any, where: str, depth: int = 0) -> None:
    """Nesting at most MAX_DEPTH deep, strings at most MAX_STRING characters."""
    if depth > MAX_DEPTH:
        raise SuiteError(f"{ctx.path}: {where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise SuiteError(
                f"{ctx.path}: {where}: a string of {len(value)} characters; expected at most {MAX_STRING}"
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            if len(k) > MAX_LABEL:
                raise SuiteError(
                    f"{ctx.path}: {where}: a key of {len(k)} characters; expected at most {MAX_LABEL}"
                )
            _check_strings(ctx, v, f"{where}.{k}" if where else k, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(ctx, v, f"{where}[{i}]", depth + 1)


def _apply_preset(ctx: _Ctx, kind: str, ident: str, raw: Any, presets: dict[str, Any]) -> Any:
    """A model's or dataset's table with its ``preset``'s keys under its own (own keys win;
    inline tables merge key by key)."""
    if not isinstance(raw, dict) or "preset" not in raw:
        return raw
    table = f"{kind}.{ident}"
    name = _check_type(ctx, table, "preset", raw["preset"], (str,), "the name of a [presets.NAME] table")
    if name not in presets:
        known = sorted(presets)
        raise ctx.err(
            table,
            "preset",
            f"{name!r} names no [presets.{name}] table"
            f"{_did_you_mean(name, known)}; presets: {', '.join(known) or 'none'}",
        )
    merged = dict(presets[name])
    for k, v in raw.items():
        if k == "preset":
            continue
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return merged


def _parse_gate(ctx: _Ctx, i: int, raw: Any, suite_models, suite_datasets) -> Gate:
    table = f"gates[{i}]"
    if not isinstance(raw, dict):
        raise ctx.err("gates", None, f"expected [[gates]] tables, got {_type_name(raw)}")
    allowed = ("metric", "protocol", "model", "dataset", "min", "max")
    for k in raw:
        if k not in allowed:
            raise ctx.err(table, k, f"unknown key; expected one of {', '.join(allowed)}")
    if "metric" not in raw:
        raise ctx.err(table, "metric", "missing required key; expected a metric name such as 'acc1'")
    if "min" not in raw and "max" not in raw:
        raise ctx.err(table, "min", "a gate needs min and/or max (fractions in [0, 1], e.g. 0.6 for 60 %)")
    kw: dict[str, Any] = {}
    for k in ("metric", "protocol", "model", "dataset"):
        if k in raw:
            kw[k] = _check_type(ctx, table, k, raw[k], (str,), "a string")
    for k in ("min", "max"):
        if k in raw:
            v = _check_type(ctx, table, k, raw[k], (float,), "a number")
            if not 0.0 <= v <= 1.0:
                raise ctx.err(table, k, f"expected a fraction in [0, 1] (e.g. 0.6 for 60 %), got {v}")
            kw[k] = v
    if kw.get("protocol") and kw["protocol"] not in PROTOCOLS:
        raise ctx.err(
            table, "protocol", f"unknown protocol {kw['protocol']!r}; expected one of {', '.join(PROTOCOLS)}"
        )
    if kw.get("model") and kw["model"] not in suite_models:
        raise ctx.err(
            table, "model", f"{kw['model']!r} names no model; expected one of {', '.join(suite_models)}"
        )
    if kw.get("dataset") and kw["dataset"] not in suite_datasets:
        raise ctx.err(
            table,
            "dataset",
            f"{kw['dataset']!r} names no dataset; expected one of {', '.join(suite_datasets)}",
        )
    return Gate(**kw)


def parse_suite(
    text: str,
    path: str = "<suite>",
    base: Path | None = None,
    defaults: dict[str, str] | None = None,
    _chain: tuple[str, ...] = (),
) -> Suite:
    """Parse a suite; ``defaults`` are values for ``${VAR}`` that the environment can override.

    ``[suite] include = "other.toml"`` (relative to this file) starts from that suite's models,
    datasets and gates; a ``[models.X]``/``[datasets.X]`` table here replaces the included
    table of the same id as a whole (in place), new ids are appended, gates add up."""
    ctx = _Ctx(path, base if base is not None else Path(path).resolve().parent, defaults)
    if len(text) > MAX_SUITE_BYTES:
        raise SuiteError(f"{path}: {len(text)} characters; a suite file may have at most {MAX_SUITE_BYTES}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib reports duplicate tables/keys as decode errors: keep its position info.
        raise SuiteError(
            f"{path}: not valid TOML ({e}); a duplicate [models.X] or [datasets.X] table is reported here too"
        ) from None
    except RecursionError:
        raise SuiteError(
            f"{path}: arrays or tables nested too deep to parse; expected at most {MAX_DEPTH} levels"
        ) from None
    _check_strings(ctx, data, "")
    for k in data:
        if k not in ("suite", "models", "datasets", "gates", "presets"):
            raise ctx.err(
                k,
                None,
                "unknown top-level table; expected [suite], [models.ID], "
                "[datasets.ID], [presets.NAME] or [[gates]]",
            )
    meta = data.get("suite", {})
    if not isinstance(meta, dict):
        raise ctx.err("suite", None, "expected a table")
    for k in meta:
        if k not in ("name", "description", "include"):
            raise ctx.err("suite", k, "unknown key; expected name, description or include")
        _check_type(ctx, "suite", k, meta[k], (str,), "a suite file path" if k == "include" else "a string")
    _check_label(ctx, "suite", meta.get("name"), "name")
    presets = data.get("presets", {})
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise ctx.err("presets", None, "expected [presets.NAME] tables")
    for name, table in presets.items():
        if "preset" in table:
            raise ctx.err(f"presets.{name}", "preset", "a preset cannot name another preset")
    inc = None
    if "include" in meta:
        ipath = str((ctx.base / meta["include"]).resolve())
        if ipath in _chain + (str(Path(path).resolve()),):
            raise ctx.err("suite", "include", f"{meta['include']!r} includes itself (cycle)")
        inc = load_suite(ipath, defaults, _chain + (str(Path(path).resolve()),))
    models_raw = data.get("models", {})
    datasets_raw = data.get("datasets", {})
    if not isinstance(models_raw, dict) or not (models_raw or inc):
        raise ctx.err("models", None, "expected at least one [models.ID] table")
    if not isinstance(datasets_raw, dict) or not (datasets_raw or inc):
        raise ctx.err("datasets", None, "expected at least one [datasets.ID] table")
    for kind, raw in (("models", models_raw), ("datasets", datasets_raw)):
        for ident in raw:
            if len(ident) > MAX_LABEL:
                raise ctx.err(kind, None, f"an id of {len(ident)} characters; expected at most {MAX_LABEL}")
            if not _ID.match(ident):
                raise ctx.err(
                    f"{kind}.{ident}",
                    None,
                    "ids use letters, digits, '_', '.' and single '-' between parts "
                    "(they appear in test ids)",
                )
    models = {
        **(inc.models if inc else {}),
        **{
            mid: _parse_model(ctx, mid, _apply_preset(ctx, "models", mid, raw, presets))
            for mid, raw in models_raw.items()
        },
    }
    from harness.data import formats  # the format registry (no torch)

    format_types = {name: types for name, (_opener, types) in formats().items()}
    datasets = {
        **(inc.datasets if inc else {}),
        **{
            did: _parse_dataset(
                ctx, did, _apply_preset(ctx, "datasets", did, raw, presets), list(models), format_types
            )
            for did, raw in datasets_raw.items()
        },
    }
    for d in datasets.values():
        if d.models is not None and d.options.get("scoring", "head") == "head" and d.type in ("mad", "pad"):
            headless = [m for m in d.models if models[m].head is None]
            if headless:
                raise ctx.err(
                    f"datasets.{d.id}",
                    "models",
                    f"scoring = 'head' but {', '.join(map(repr, headless))} has no head; "
                    "list only models with head = PATH, or score with 'text' or 'probe'",
                )
    clash = set(models) & set(datasets)
    if clash:
        c = sorted(clash)[0]
        raise ctx.err(f"datasets.{c}", None, f"duplicate id {c!r}: a model has it too; ids must be unique")
    for m in models.values():
        if m.baseline is not None:
            if m.baseline not in models:
                raise ctx.err(
                    f"models.{m.id}",
                    "baseline",
                    f"{m.baseline!r} names no model; expected one of {', '.join(models)}",
                )
            if m.baseline == m.id:
                raise ctx.err(f"models.{m.id}", "baseline", "a model cannot be its own baseline")
    for d in datasets.values():
        dev = d.options.get("dev")
        if dev is not None and dev not in datasets:
            raise ctx.err(
                f"datasets.{d.id}", "dev", f"{dev!r} names no dataset; expected one of {', '.join(datasets)}"
            )
    gates_raw = data.get("gates", [])
    if not isinstance(gates_raw, list):
        raise ctx.err("gates", None, "expected [[gates]] tables")
    gates = (inc.gates if inc else ()) + tuple(
        _parse_gate(ctx, i, g, models, datasets) for i, g in enumerate(gates_raw)
    )
    name = meta.get("name") or Path(path).stem
    return Suite(
        path=path,
        name=name,
        models=models,
        datasets=datasets,
        gates=gates,
        description=meta.get("description", ""),
    )


def load_suite(
    path: str | os.PathLike, defaults: dict[str, str] | None = None, _chain: tuple[str, ...] = ()
) -> Suite:
    p = Path(path)
    try:
        if p.is_dir():
            raise SuiteError(f"{p}: is a folder; expected a suite .toml file")
        if p.exists() and not p.is_file():
            raise SuiteError(f"{p}: not a regular file; expected a suite .toml file")
        with open(p, "rb") as f:
            data = f.read(MAX_SUITE_BYTES + 1)
    except FileNotFoundError:
        raise SuiteError(
            f"{p}: suite file not found" + (f" (included by {_chain[-1]})" if _chain else "")
        ) from None
    except OSError as e:
        raise SuiteError(f"{p}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_SUITE_BYTES:
        raise SuiteError(f"{p}: larger than {MAX_SUITE_BYTES} bytes; a suite file is a few kB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SuiteError(f"{p}: not UTF-8 text (byte {e.start}, line {line}); TOML files are UTF-8") from None
    return parse_suite(text, str(p), p.resolve().parent, defaults, _chain)


def suites_dirs(rootpath: str | os.PathLike) -> list[Path]:
    """Where ``--suite NAME`` looks: the checkout's ``benchmarks/suites``, then the suites
    installed with the package (``tradeoff_bench_benchmarks/suites``)."""
    out = [Path(rootpath) / "benchmarks" / "suites"]
    import importlib.util

    spec = importlib.util.find_spec("tradeoff_bench_benchmarks")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        d = Path(loc) / "suites"
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def resolve_suite(name_or_path: str, suites_dir: str | os.PathLike | list[Path]) -> Path:
    """``--suite NAME|PATH``: a bare name resolves to ``NAME.toml`` in the first of
    ``suites_dir`` (one folder or a list) that has it."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path or p.exists():
        return p
    dirs = [Path(d) for d in suites_dir] if isinstance(suites_dir, list) else [Path(suites_dir)]
    for d in dirs:
        cand = d / f"{name_or_path}.toml"
        if cand.is_file():
            return cand
    avail = sorted({x.stem for d in dirs if d.is_dir() for x in d.glob("*.toml")})
    tried = ", ".join(str(d / f"{name_or_path}.toml") for d in dirs)
    raise SuiteError(
        f"--suite {name_or_path}: no file {tried}; available suites: {', '.join(avail)}"
        f"{_did_you_mean(name_or_path, avail)}"
    )
