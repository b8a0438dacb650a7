"""``checkpoint_format = "clip-lora"``: OpenAI-``clip``-named state dicts with unmerged q/v LoRA.

FRoundation, MADation and FoundPAD share one CLIP-LoRA code base and save
``torch.save(model.state_dict())`` of the whole OpenAI ``clip`` model.  In each attention block
that carries LoRA the fused ``in_proj_weight``/``in_proj_bias`` and ``out_proj.*`` are replaced by
``q_proj``, ``k_proj``, ``v_proj``, ``proj`` (``.weight``, ``.bias``) plus the factors
``q_proj.w_lora_A`` [r, d_in], ``q_proj.w_lora_B`` [d_out, r] (and the same for ``v_proj``).

Conversion: ``W' = W + s * B @ A`` with ``s = alpha / sqrt(r)`` (``scaling = "rslora"``) or
``s = alpha / r`` (``"standard"``); ``in_proj_weight = cat(Wq', Wk', Wv')`` (biases likewise) and
``proj -> out_proj``.  Factors on ``k_proj`` or ``proj`` are merged the same way if present.
Everything else already has open_clip's names: open_clip's ``CLIP`` class uses the OpenAI ones.

The OpenAI ``clip`` package builds every model with QuickGELU; ``load_model`` therefore creates
the open_clip model with ``force_quick_gelu=True`` for this format.
"""

from __future__ import annotations

import math
import re

from harness.errors import ModelError
from harness.models.checkpoints import OPENAI_META_KEYS, load_strict, safe_load, unwrap_state_dict

_PROJ = re.compile(r"^(?P<prefix>.+)\.(?P<name>q_proj|k_proj|v_proj|proj)\.weight$")


def lora_scale(alpha: float, rank: int, scaling: str) -> float:
    """``alpha / sqrt(rank)`` for ``"rslora"``, ``alpha / rank`` for ``"standard"``."""
    if scaling == "rslora":
        return float(alpha) / math.sqrt(rank)
    if scaling == "standard":
        return float(alpha) / rank
    raise ModelError(f"lora.scaling = {scaling!r}: expected 'rslora' (alpha/sqrt(r)) or 'standard' (alpha/r)")


def _merged(sd: dict, key: str, alpha: float, scaling: str, rank: int | None, ctx: str, out=None):
    """Pop ``key.weight`` (and its LoRA factors) from ``sd``; return the merged weight.

    The merge is done in place (``addmm_``) in ``out`` when given (a slice of the fused in_proj
    tensor, possibly the model's own), else in a new tensor only where there is something to
    merge; at least float32 (a half-precision file is merged in float32).
    """
    import torch

    w = sd.pop(f"{key}.weight")
    a = sd.pop(f"{key}.w_lora_A", None)
    b = sd.pop(f"{key}.w_lora_B", None)
    if (a is None) != (b is None):
        have, lack = ("w_lora_A", "w_lora_B") if b is None else ("w_lora_B", "w_lora_A")
        raise ModelError(f"{ctx}: {key}.{have} has no matching {key}.{lack}")
    if a is not None:
        if a.ndim != 2 or b.ndim != 2 or w.ndim != 2:
            raise ModelError(
                f"{ctx}: {key}: LoRA factors and weight must be matrices, got "
                f"A {list(a.shape)}, B {list(b.shape)}, W {list(w.shape)}"
            )
        r = a.shape[0]
        if b.shape[1] != r:
            raise ModelError(
                f"{ctx}: {key}.w_lora_A is {list(a.shape)} (rank {r}) but "
                f"{key}.w_lora_B is {list(b.shape)} (rank {b.shape[1]})"
            )
        if b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1]:
            raise ModelError(
                f"{ctx}: {key}: B @ A is [{b.shape[0]}, {a.shape[1]}] but {key}.weight is {list(w.shape)}"
            )
        if rank is not None and r != rank:
            raise ModelError(
                f"{ctx}: lora.rank = {rank} but {key}.w_lora_A {list(a.shape)} has "
                f"rank {r}: set rank = {r}, or leave rank out to read it from the checkpoint"
            )
        s = lora_scale(alpha, r, scaling)
        if out is None:
            dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
            out = torch.empty(w.shape, dtype=dtype, device=w.device)
        out.copy_(w)
        out.addmm_(b.to(out.dtype), a.to(out.dtype), alpha=s)  # out += s * B @ A, in place
        return out
    if out is not None:
        out.copy_(w)
        return out
    return w


def _convert(sd: dict, alpha, scaling, rank, ctx: str, targets: dict | None = None) -> dict:
    """Convert in place: pops the OpenAI/LoRA keys of ``sd`` as it goes and returns ``sd``.

    ``targets`` (the model's own ``state_dict()``): each fused ``in_proj_weight`` is written
    straight into the model's tensor of that name and shape instead of a new one.
    """
    import torch

    if alpha is None:
        raise ModelError(f"{ctx}: clip-lora needs lora.alpha")
    lora_scale(alpha, 1, scaling)  # validates scaling
    if rank is not None and (not isinstance(rank, int) or rank <= 0):
        raise ModelError(f"{ctx}: lora.rank = {rank!r}: expected a positive integer")
    for k in OPENAI_META_KEYS:
        sd.pop(k, None)
    prefixes = sorted({m.group("prefix") for k in sd if (m := _PROJ.match(k)) and m.group("name") != "proj"})
    for p in prefixes:
        names = [f"{p}.{n}" for n in ("q_proj", "k_proj", "v_proj", "proj")]
        lacking = [f"{n}.weight" for n in names if f"{n}.weight" not in sd]
        if lacking:
            raise ModelError(f"{ctx}: attention block {p} has q/k/v_proj but lacks {', '.join(lacking)}")
        q, k, v = (sd[f"{n}.weight"] for n in names[:3])
        if not (q.ndim == k.ndim == v.ndim == 2 and q.shape[1] == k.shape[1] == v.shape[1]):
            raise ModelError(
                f"{ctx}: {p}: q/k/v_proj.weight shapes {list(q.shape)}, "
                f"{list(k.shape)}, {list(v.shape)} cannot be fused into in_proj_weight"
            )
        dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
        rows = [q.shape[0], k.shape[0], v.shape[0]]
        shape = (sum(rows), q.shape[1])
        in_w = targets.get(f"{p}.in_proj_weight") if targets is not None else None
        if in_w is None or tuple(in_w.shape) != shape or not in_w.is_floating_point():
            in_w = torch.empty(shape, dtype=dtype, device=q.device)
        start = 0
        for n, rws in zip(names[:3], rows):
            _merged(sd, n, alpha, scaling, rank, ctx, out=in_w[start : start + rws])
            start += rws
        sd[f"{p}.in_proj_weight"] = in_w
        biases = [sd.pop(f"{n}.bias", None) for n in names[:3]]
        if all(b is not None for b in biases):
            sd[f"{p}.in_proj_bias"] = torch.cat([b.to(dtype) for b in biases])
        elif any(b is not None for b in biases):
            raise ModelError(f"{ctx}: {p}: some of q/k/v_proj have a bias and some do not")
        sd[f"{p}.out_proj.weight"] = _merged(sd, names[3], alpha, scaling, rank, ctx)
        pb = sd.pop(f"{names[3]}.bias", None)
        if pb is not None:
            sd[f"{p}.out_proj.bias"] = pb
    return sd


def convert_clip_lora_state_dict(sd: dict, alpha: float, scaling: str, rank: int | None = None) -> dict:
    """OpenAI-named state dict with unmerged LoRA -> open_clip ``CLIP`` state dict (merged).

    ``sd`` is left as it was (the result shares its unchanged tensors); ``rank``, when given,
    must equal the rank of every LoRA factor pair, else :class:`ModelError` names the key and
    both ranks.  Raises :class:`ModelError` for an unknown ``scaling``, inconsistent factor
    shapes or an attention block missing one of q/k/v_proj or proj.
    """
    return _convert(dict(sd), alpha, scaling, rank, "clip-lora state dict")


def load_clip_lora_checkpoint(spec, model) -> None:
    """Read ``spec.checkpoint`` (clip-lora layout), merge the LoRA factors and load strictly.

    Memory: the file is memory-mapped (that is the one extra copy of the weights); each block's
    q/k/v (+ LoRA) are merged straight into the model's ``in_proj_weight``; the other tensors
    are copied into the model's existing parameters (taking the model's dtype) and the mapping
    is released.  Merging needs no temporaries beyond the factors (``addmm_`` in place).
    ``assign=True`` is not used: it would keep checkpoint dtypes (an fp16 file would make an fp16
    model) and leave parameters backed by the mapped file, without lowering the peak, since the
    freshly created model already holds its own copy.
    """
    ctx = f"{spec.source}: [models.{spec.id}] checkpoint"
    pre = f"{ctx} = {spec.checkpoint!r}"
    sd = unwrap_state_dict(safe_load(spec.checkpoint, ctx), pre)
    # no LoRA keys: tell the user plainly instead of a long missing/unexpected listing
    if (
        not any(k.endswith("w_lora_A") for k in sd)
        and any(k.endswith(".in_proj_weight") for k in sd)
        and not any(_PROJ.match(k) for k in sd)
    ):
        raise ModelError(
            f"{pre}: has no q_proj/v_proj or w_lora_A/B keys (fused in_proj "
            "weights instead): it is not a clip-lora checkpoint; use "
            "checkpoint_format = 'open_clip'"
        )
    import torch

    lo = spec.lora
    with torch.no_grad():
        # in_proj is fused straight into the model's parameters: no third copy of those weights
        sd = _convert(sd, lo.alpha, lo.scaling, lo.rank, pre, targets=model.state_dict())
    load_strict(model, sd, pre, spec.arch, "clip-lora")
    sd.clear()
