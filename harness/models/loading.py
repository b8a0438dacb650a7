"""Model specs -> open_clip networks: creation, pretrained tags, weights files, checkpoints.

:func:`load_model` builds a :class:`~harness.models.loaded.LoadedModel` now;
:func:`open_model` returns one that builds its network only when something is not cached
(its preprocessing comes from the model description cache, :mod:`harness.models.description`).
A new checkpoint format is one module in this package plus one entry in ``_CHECKPOINT_FORMATS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from harness.errors import ModelError
from harness.models.description import (
    description_path,
    read_description,
    weights_fingerprint,
    write_description,
)
from harness.models.head import load_head
from harness.models.loaded import LoadedModel
from harness.models.preprocess import build_preprocess
from harness.suite import ModelSpec

_LOCAL_DIR_PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def _where(spec: ModelSpec) -> str:
    return f"{spec.source}: [models.{spec.id}]"


def _local_dir_weights(spec: ModelSpec, d: str) -> str | None:
    """The weights file of a ``local-dir:`` folder, by open_clip's preference; None if none.

    Several candidates and none of open_clip's preferred names is an error here (open_clip
    would pick one alphabetically, with only a log line)."""
    files = sorted(
        f
        for f in os.listdir(d)
        if f.endswith((".safetensors", ".bin", ".pth")) and os.path.isfile(os.path.join(d, f))
    )
    for name in _LOCAL_DIR_PREFERRED:
        if name in files:
            return os.path.join(d, name)
    if len(files) > 1:
        raise ModelError(
            f"{_where(spec)} arch = {spec.arch!r}: several weights files in the folder "
            f"({', '.join(files)}): keep one, or name it open_clip_model.safetensors"
        )
    return os.path.join(d, files[0]) if files else None


def _create_plan(spec: ModelSpec) -> tuple[dict, str | None]:
    """Keyword arguments for ``open_clip.create_model`` and a weights file to load ourselves.

    - A ``checkpoint`` replaces every tensor (both formats load strictly), so the ``pretrained``
      weights are not loaded under it (nor downloaded); the tag still sets QuickGELU and the
      preprocessing.
    - ``checkpoint_format = "clip-lora"`` comes from OpenAI's ``clip`` package, which always uses
      QuickGELU: forced, whatever ``arch`` says.
    - A pretrained tag trained with QuickGELU (``openai`` and others) forces QuickGELU: open_clip
      3.x only warns when ``arch = "ViT-B-16"`` meets ``pretrained = "openai"`` and builds GELU.
    - Weights files the suite names (``pretrained = "/path/file"``, a ``local-dir:`` folder's
      weights) are read through :func:`harness.models.checkpoints.safe_load`.
    """
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    arch = spec.arch
    has_ckpt = bool(spec.checkpoint)
    kw: dict[str, Any] = {
        "pretrained": None,
        "load_weights": True,
        "force_quick_gelu": spec.checkpoint_format == "clip-lora" and has_ckpt,
        "force_preprocess_cfg": None,
        "require_pretrained": False,
    }
    weights_file = None
    if arch.startswith("local-dir:"):
        d = arch[len("local-dir:") :]
        if not os.path.isdir(d):
            raise ModelError(f"{_where(spec)} arch = {arch!r}: folder not found: {d}")
        if not os.path.isfile(os.path.join(d, "open_clip_config.json")):
            raise ModelError(f"{_where(spec)} arch = {arch!r}: no open_clip_config.json in {d}")
        kw["load_weights"] = False
        if not has_ckpt:
            weights_file = _local_dir_weights(spec, d)
    elif arch.startswith("hf-hub:"):
        if has_ckpt:
            kw["load_weights"] = False
        else:
            kw["require_pretrained"] = True
    else:
        import open_clip

        name = arch.replace("/", "-")
        if name not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
            raise ModelError(
                f"{_where(spec)} arch = {arch!r}: not an open_clip model name"
                + (
                    f"; did you mean {', '.join(map(repr, close))}?"
                    if close
                    else "; see open_clip.list_models(), or use 'local-dir:PATH' / 'hf-hub:ORG/NAME'"
                )
            )
        if spec.pretrained:
            tag_cfg = get_pretrained_cfg(name, spec.pretrained)
            if tag_cfg:
                if tag_cfg.get("quick_gelu"):
                    kw["force_quick_gelu"] = True
                pp = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
                kw["force_preprocess_cfg"] = pp or None
                if not has_ckpt:
                    kw["pretrained"] = spec.pretrained
                    kw["require_pretrained"] = True
            elif os.path.isfile(spec.pretrained):
                if not has_ckpt:
                    weights_file = spec.pretrained
            elif (
                os.sep in spec.pretrained
                or "${" in spec.pretrained
                or spec.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
            ):
                raise ModelError(f"{_where(spec)} pretrained = {spec.pretrained!r}: file not found")
            else:
                tags = list_pretrained_tags_by_model(name)
                raise ModelError(
                    f"{_where(spec)} pretrained = {spec.pretrained!r}: not a pretrained tag "
                    f"of {name!r} (its tags: {', '.join(tags) or 'none'}) nor a file"
                )
    return kw, weights_file


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover
        return "~/.cache/huggingface/hub"


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _download_error(spec: ModelSpec, e: Exception) -> ModelError:
    """A one-line ModelError naming the weights file that could not be had, and how to get it."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg

    why = (
        "are not in the local cache and HF_HUB_OFFLINE=1 forbids downloading them"
        if _offline()
        else f"could not be downloaded ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    )
    cache = _hf_cache_dir()
    if spec.arch.startswith("hf-hub:"):
        repo = spec.arch[len("hf-hub:") :]
        return ModelError(
            f"{_where(spec)} arch = {spec.arch!r}: open_clip_config.json and the weights "
            f"({HF_SAFE_WEIGHTS_NAME} or {HF_WEIGHTS_NAME}) of the Hugging Face repo {repo} {why} "
            f"(cache: {cache}); run once with network access (HF_HUB_OFFLINE unset), or fetch them "
            f"with `hf download {repo}`, or put both files in a folder and use "
            f"arch = 'local-dir:/path/to/folder'"
        )
    cfg = get_pretrained_cfg(spec.arch.replace("/", "-"), spec.pretrained or "")
    hub = cfg.get("hf_hub", "")
    if hub:
        if hub.endswith("/"):
            repo, fname = hub.rstrip("/"), HF_WEIGHTS_NAME
        else:
            repo, fname = os.path.split(hub)
        what = f"{fname} of the Hugging Face repo {repo} (cache: {cache})"
        how = f"`hf download {repo} {fname}`"
    else:
        fname = os.path.basename(cfg.get("url", "")) or "the weights file"
        what = f"{fname} ({cfg.get('url', '')}, cache: ~/.cache/clip)"
        how = f"downloading {cfg.get('url', 'it')}"
    return ModelError(
        f"{_where(spec)} arch = {spec.arch!r}, pretrained = {spec.pretrained!r}: the weights {what} "
        f"{why}; run once with network access (HF_HUB_OFFLINE unset), or fetch them with {how} "
        f"and set pretrained = '/path/to/{fname}'"
    )


def _create_open_clip(spec: ModelSpec, device: str):
    import pickle

    import open_clip

    from harness.errors import UnsafePickleError
    from harness.models.checkpoints import load_open_clip_file

    kw, weights_file = _create_plan(spec)
    try:
        model = open_clip.create_model(spec.arch, device="cpu", **kw)
    except pickle.UnpicklingError:
        raise UnsafePickleError(
            f"{_where(spec)} arch = {spec.arch!r}, pretrained = {spec.pretrained!r}: "
            "the downloaded weights are a pickle that references more than "
            "tensors; refused, nothing was executed"
        ) from None
    except (FileNotFoundError, ValueError) as e:
        raise ModelError(f"{_where(spec)} arch = {spec.arch!r}: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:
        msg = str(e)
        if (
            "download" in msg.lower()
            or "could not be loaded" in msg
            or "offline" in msg.lower()
            or "HF Hub" in msg
        ):
            raise _download_error(spec, e) from None
        raise ModelError(
            f"{_where(spec)} arch = {spec.arch!r}, pretrained = {spec.pretrained!r}: "
            f"{msg.splitlines()[0] if msg else type(e).__name__}"
        ) from None
    if weights_file is not None:
        key = (
            "pretrained"
            if spec.pretrained and os.path.abspath(weights_file) == os.path.abspath(spec.pretrained)
            else "arch (local-dir weights)"
        )
        load_open_clip_file(model, weights_file, f"{_where(spec)} {key}", spec.arch)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return model, tokenizer


def _open_clip_preprocess_cfg(model) -> dict:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    return dict(cfg)


def load_model(spec: ModelSpec, device: str = "cpu", autocast: str | bool | None = None) -> LoadedModel:
    """Load ``spec`` onto ``device``; raises :class:`ModelError` with a one-line reason."""
    model, tokenizer = _create_open_clip(spec, device)
    if spec.checkpoint:
        loader = _CHECKPOINT_FORMATS.get(spec.checkpoint_format)
        if loader is None:
            raise ModelError(
                f"{spec.source}: [models.{spec.id}] checkpoint_format = "
                f"{spec.checkpoint_format!r} is not supported"
            )
        loader(spec, model)
    embed_dim = getattr(getattr(model, "visual", None), "output_dim", None)
    head = load_head(spec, embed_dim) if spec.head else None
    model.eval().to(device)
    pre = build_preprocess(spec.preprocess, _open_clip_preprocess_cfg(model), f"{_where(spec)} preprocess")
    return LoadedModel(spec, model, tokenizer, pre, device, weights_fingerprint(spec), head, autocast)


def open_model(
    spec: ModelSpec, device: str, autocast: str | bool | None, cache_dir, on_load=None
) -> LoadedModel:
    """A model whose network is built only when needed.

    The preprocessing (which, with the weights' fingerprint, keys the cached features) is
    remembered under ``cache_dir/models/`` the first time the model is built; later runs read it
    and defer building the network until something is not in the cache.  ``on_load`` is called
    whenever the network is built.
    """
    fp = weights_fingerprint(spec)
    path = description_path(spec, cache_dir, fp)
    desc = read_description(path)
    if desc is None:
        model = load_model(spec, device, autocast)
        model.on_load = on_load
        embed = getattr(getattr(model.model, "visual", None), "output_dim", None)
        write_description(path, spec.id, model.preprocess, embed)
        if on_load is not None:
            on_load(spec.id)
        return model
    pre, embed_dim = desc
    head = load_head(spec, embed_dim) if spec.head else None
    return LoadedModel(
        spec,
        None,
        None,
        pre,
        device,
        fp,
        head,
        autocast,
        factory=lambda: load_model(spec, device, autocast),
        on_load=on_load,
    )


def _load_open_clip_checkpoint(spec: ModelSpec, model) -> None:
    from harness.models.checkpoints import load_open_clip_checkpoint

    load_open_clip_checkpoint(spec, model)


def _load_clip_lora_checkpoint(spec: ModelSpec, model) -> None:
    from harness.models.clip_lora import load_clip_lora_checkpoint

    load_clip_lora_checkpoint(spec, model)


_CHECKPOINT_FORMATS: dict[str, Callable[[ModelSpec, Any], None]] = {
    "open_clip": _load_open_clip_checkpoint,
    "clip-lora": _load_clip_lora_checkpoint,
}
