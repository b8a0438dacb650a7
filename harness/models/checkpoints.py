"""Reading weight files safely, and the ``open_clip`` checkpoint format and task heads.

:func:`safe_load` is the one way the harness reads a checkpoint, head or weights file that a
suite names: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)`` (memory-mapped where the file allows).  A pickle that refers to
anything beyond tensors and plain containers is refused with :class:`UnsafePickleError` before
any of it runs.

``checkpoint_format = "open_clip"``: a state dict in open_clip's own names (what
``torch.save(model.state_dict())`` of an open_clip model writes), possibly wrapped under a
``state_dict`` or ``model`` key and possibly with DataParallel's ``module.`` prefixes.  It must
fit the architecture exactly: every tensor present, nothing extra, every shape equal.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from harness.errors import ModelError, UnsafePickleError

# Entries OpenAI's TorchScript models carry beside the weights; never part of a model's params.
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
_SHOW = 5  # how many keys an error message lists


def _where(spec, key: str) -> str:
    return f"{spec.source}: [models.{spec.id}] {key}"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _unsafe_reason(msg: str) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return f"it references {m.group(1)}, which is not a tensor or plain container"
    m = re.search(r"Unsupported operand (\d+)", msg)
    if m:
        return f"it uses pickle instruction {m.group(1)}, which a weights-only load does not allow"
    return "it holds something other than tensors and plain containers"


def _starts_like_pickle(path: str) -> bool:
    """Pickles of protocol 2 and later (all that torch writes) start with the PROTO opcode."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def safe_load(path: str | os.PathLike, context: str | None = None) -> Any:
    """Read a weights file without executing anything in it.

    ``.safetensors``: ``safetensors.torch.load_file``.  Otherwise ``torch.load(path,
    map_location="cpu", weights_only=True, mmap=True)``, without ``mmap`` for files in torch's
    legacy (pre-zip) format.  ``context`` (e.g. ``"suite.toml: [models.x] checkpoint"``) starts
    every error message.

    Raises :class:`ModelError` for a missing or unreadable file and :class:`UnsafePickleError`
    for a pickle that refers to anything beyond tensors and containers.
    """
    p = os.fspath(path)
    pre = f"{context} = {p!r}" if context else p
    if not os.path.isfile(p):
        hint = ""
        m = re.search(r"\$\{(\w+)\}", p)
        if m:
            hint = f" (environment variable {m.group(1)} is not set)"
        raise ModelError(f"{pre}: file not found{hint}")
    if p.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(p, device="cpu")
        except Exception as e:
            raise ModelError(f"{pre}: not a readable safetensors file ({_first_line(e)})") from None
    import torch

    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            # legacy (non-zip) torch.save format: no memory map possible
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e) and not _starts_like_pickle(p):
            raise ModelError(f"{pre}: not a torch checkpoint (neither a zip archive nor a pickle)") from None
        raise UnsafePickleError(
            f"{pre}: refused to load: {_unsafe_reason(str(e))}; nothing in the file was executed "
            "(re-save only the tensors, e.g. torch.save(model.state_dict()), or use .safetensors)"
        ) from None
    except RuntimeError as e:
        msg = str(e)
        if "TorchScript" in msg:
            raise ModelError(
                f"{pre}: a TorchScript archive, not a state dict: use the open_clip "
                "pretrained tag instead, or re-save its state_dict()"
            ) from None
        raise ModelError(f"{pre}: not a torch checkpoint ({_first_line(e)})") from None
    except (EOFError, OSError, ValueError) as e:
        raise ModelError(f"{pre}: not a torch checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def unwrap_state_dict(obj: Any, context: str) -> dict:
    """A loaded file -> ``{name: tensor}``: unwrap ``state_dict``/``model``, strip ``module.``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ModelError(
            f"{context}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    out: dict = {}
    bad: list[str] = []
    for k, v in obj.items():
        k = str(k)
        if k in OPENAI_META_KEYS:
            continue
        if not _is_tensor(v):
            bad.append(f"{k} ({type(v).__name__})")
            continue
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    if bad:
        raise ModelError(
            f"{context}: expected only tensors in the state dict, found "
            f"{len(bad)} other entries: {', '.join(bad[:_SHOW])}"
        )
    if not out:
        raise ModelError(f"{context}: the state dict is empty")
    return out


def _n(n: int, word: str, plural: str = "s") -> str:
    return f"{n} {word}{'' if n == 1 else plural}"


def _listing(keys: list, n: int = _SHOW) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(model, sd: dict, context: str, arch: str, fmt: str) -> None:
    """Load ``sd`` into ``model`` requiring the same keys and shapes; one-line ModelError else.

    Tensors are copied into the model's existing parameters (so they take the model's dtype and
    the state dict can be freed right after); tensors that already are the model's own (a
    converter wrote them in place) are not copied again.
    """
    import torch

    expected = model.state_dict()  # references, no copies
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {list(sd[k].shape)} vs {list(expected[k].shape)}"
        for k in sd
        if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_n(len(missing), 'key')}: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {_n(len(unexpected), 'key')}: {_listing(unexpected)}")
        if shapes:
            parts.append(
                f"{_n(len(shapes), 'shape mismatch', 'es')} (checkpoint vs model): {_listing(shapes, 3)}"
            )
        raise ModelError(
            f"{context}: does not fit arch = {arch!r} as checkpoint_format = {fmt!r} "
            f"({len(expected)} tensors expected); " + "; ".join(parts)
        )
    # tensors a converter already wrote into the model's own storage need no copy
    in_place = {
        k
        for k, v in sd.items()
        if v.data_ptr() == expected[k].data_ptr() and v.dtype == expected[k].dtype and v.numel() > 0
    }
    del expected
    rest = {k: v for k, v in sd.items() if k not in in_place}
    with torch.no_grad():
        result = model.load_state_dict(rest, strict=False)
    del rest
    if set(result.missing_keys) != in_place or result.unexpected_keys:  # pragma: no cover
        raise ModelError(
            f"{context}: internal error: load_state_dict reports missing "
            f"{result.missing_keys[:_SHOW]}, unexpected {result.unexpected_keys[:_SHOW]}"
        )


def adapt_open_clip_state_dict(sd: dict, model) -> dict:
    """The small compatibility fixes open_clip's own loader applies to its state dicts."""
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        # an OpenAI-layout text tower saved from CLIP, loaded into CustomTextCLIP
        from open_clip.model import convert_to_custom_text_state_dict

        sd = convert_to_custom_text_state_dict(sd)
    ls = getattr(model, "logit_scale", None)
    if (
        "logit_scale" in sd
        and ls is not None
        and sd["logit_scale"].ndim != ls.ndim
        and sd["logit_scale"].numel() == ls.numel()
    ):
        sd["logit_scale"] = sd["logit_scale"].reshape(ls.shape)
    lb = getattr(model, "logit_bias", None)
    if (
        "logit_bias" in sd
        and lb is not None
        and sd["logit_bias"].ndim != lb.ndim
        and sd["logit_bias"].numel() == lb.numel()
    ):
        sd["logit_bias"] = sd["logit_bias"].reshape(lb.shape)
    pid = "text.transformer.embeddings.position_ids"
    if pid in sd and pid not in model.state_dict():
        del sd[pid]
    return sd


def load_open_clip_file(model, path: str, context: str, arch: str, fmt: str = "open_clip") -> None:
    """Read an open_clip-named weights file with :func:`safe_load` and load it strictly."""
    sd = unwrap_state_dict(safe_load(path, context), f"{context} = {path!r}")
    sd = adapt_open_clip_state_dict(sd, model)
    load_strict(model, sd, f"{context} = {path!r}", arch, fmt)
    del sd


def load_open_clip_checkpoint(spec, model) -> None:
    """``checkpoint_format = "open_clip"``: the suite's ``checkpoint`` file, loaded strictly."""
    load_open_clip_file(model, spec.checkpoint, _where(spec, "checkpoint"), spec.arch)


def _strip(k: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in ("module.", "head."):
            if k.startswith(p):
                k, changed = k[len(p) :], True
    return k


def read_head(spec, embed_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The suite's ``head`` file -> (weight [2, D] float32, bias [2] float32).

    Accepts ``linear.weight``/``linear.bias`` (MADation, FoundPAD) or ``weight``/``bias``,
    optionally under ``head.`` or ``module.``; nothing else may be in the file (a head with more
    layers would be silently misread otherwise).  ``embed_dim``, where known, must equal D.
    """
    ctx = _where(spec, "head")
    sd = unwrap_state_dict(safe_load(spec.head, ctx), f"{ctx} = {spec.head!r}")
    sd = {_strip(k): v for k, v in sd.items()}
    pre = f"{ctx} = {spec.head!r}"
    for wk, bk in (("linear.weight", "linear.bias"), ("weight", "bias")):
        if wk in sd and bk in sd:
            break
    else:
        raise ModelError(
            f"{pre}: expected a binary head with linear.weight [2, D] and linear.bias [2] "
            f"(or weight/bias), found keys: {_listing(sorted(sd))}"
        )
    extra = sorted(k for k in sd if k not in (wk, bk))
    if extra:
        raise ModelError(
            f"{pre}: expected only {wk} and {bk} (a single Linear(D, 2)), also found: {_listing(extra)}"
        )
    w = np.array(sd[wk].detach().float().cpu().numpy(), dtype=np.float32, copy=True)
    b = np.array(sd[bk].detach().float().cpu().numpy(), dtype=np.float32, copy=True)
    if w.ndim != 2 or w.shape[0] != 2:
        hint = " (transposed? a torch Linear(D, 2) stores [2, D])" if w.ndim == 2 and w.shape[1] == 2 else ""
        raise ModelError(f"{pre}: {wk} has shape {list(w.shape)}, expected [2, D]{hint}")
    if b.shape != (2,):
        raise ModelError(f"{pre}: {bk} has shape {list(b.shape)}, expected [2]")
    if embed_dim is not None and w.shape[1] != embed_dim:
        raise ModelError(
            f"{pre}: {wk} has shape {list(w.shape)} but arch = {spec.arch!r} gives "
            f"{embed_dim}-dimensional image embeddings"
        )
    return w, b
