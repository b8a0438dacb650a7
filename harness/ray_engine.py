"""The feature stage on Ray Data (``--engine ray``): decode on CPU tasks, models in actor pools.

Same contract as :func:`harness.stage.extract_many` — one pass over a split for several models,
one :class:`harness.features.Features` per need — but executed by Ray Data:

- reading, decoding and every distinct preprocessing run as CPU tasks (``map_batches`` with a
  function), so they scale with the cluster's cores;
- inference runs in a pool of actors, each holding one replica of every model of the pass
  (``num_gpus`` per actor where GPUs exist); an actor killed mid-pass is restarted and its
  batches retried by Ray;
- the driver receives feature batches as the pipeline streams and hands each one to
  ``on_batch`` (the store writes chunks from there) before assembling the arrays.

Models travel as their suite specs (plain dataclasses) and are built inside the actors, never
pickled.  Ray is an optional extra: ``pip install "tradeoff-bench[ray]"``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from harness.errors import HarnessError


class RayUnavailable(HarnessError):
    """``--engine ray`` without Ray installed, or a cluster that cannot be reached."""


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayUnavailable(
            "--engine ray needs Ray: pip install 'tradeoff-bench[ray]' (or pip install 'ray[data]')"
        ) from None
    return ray


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail in one line, within ``timeout`` seconds, when ``host:port`` does not answer.

    ``ray.init(address=...)`` retries an unreachable head for a long time; a plain TCP connect
    first turns that into an immediate, named error.  ``auto`` and ``local`` are Ray's own
    keywords and are passed through."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(
            f"--ray-address {address}: expected HOST:PORT (or ray://HOST:PORT, 'auto', 'local')"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise RayUnavailable(
            f"--ray-address {address}: cannot reach the Ray head ({e}); start "
            "it with `ray start --head` or omit --ray-address for a local Ray"
        ) from None


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    """Join ``address`` (checked first), or start/join a local Ray."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address:
        check_address(address)
        kw["address"] = address
    elif num_cpus is not None:
        kw["num_cpus"] = num_cpus
    ray.init(**kw)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    return ray


@contextlib.contextmanager
def _quiet_ray():
    """Ray 2.60 warns, on every run, about its own DataContext defaults (raised from
    ``ray.data.context``) and about ``max_restarts``/``max_task_retries`` given as keyword
    arguments (deprecated without a named replacement; see :func:`_actor_retry_args`).  Only
    those are silenced; any other warning reaches the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context")
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        yield


def _actor_retry_args(ray) -> dict[str, int]:
    """Bounded fault tolerance for the model actors: a killed actor is restarted twice and a
    batch retried three times, after which the pass fails (Ray's own default is to restart and
    retry forever, which turns a model that crashes on every batch into a hang).  Ray 2.60
    accepts these only as extra keyword arguments and says they go in 2.64; where
    ``map_batches`` no longer takes them, Ray's defaults apply."""
    import inspect

    params = inspect.signature(ray.data.Dataset.map_batches).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"max_restarts": 2, "max_task_retries": 3}
    return {}  # pragma: no cover - a future Ray


def _decode(batch: dict, split, pres) -> dict:
    """CPU task body: ids -> decoded, preprocessed image tensors (one column per transform)."""
    from harness.errors import DataError

    transforms = [p.transform() for p in pres]
    ids = np.asarray(batch["id"], dtype=np.int64)
    cols: list[list[np.ndarray]] = [[] for _ in transforms]
    ok = np.ones(len(ids), dtype=bool)
    for r, i in enumerate(ids):
        try:
            img = split.load(int(i))
            xs = [t(img).numpy() for t in transforms]
        except DataError:
            raise
        except Exception:
            ok[r] = False
            xs = [np.zeros((3, p.size, p.size), dtype=np.float32) for p in pres]
        for c, x in zip(cols, xs):
            c.append(x)
    out = {"id": ids, "ok": ok}
    for j, c in enumerate(cols):
        out[f"x{j}"] = np.stack(c).astype(np.float32, copy=False)
    return out


def _fault_point() -> None:
    """Test hook: with ``HARNESS_FAULT_KILL_ONCE=PATH`` set and PATH present, the actor deletes
    PATH and dies (``os._exit``) in the middle of the pass, as a killed worker would."""
    path = os.environ.get("HARNESS_FAULT_KILL_ONCE")
    if path and os.path.exists(path):
        try:
            os.unlink(path)
        except OSError:
            return
        os._exit(1)


class _Embed:
    """Actor body: one replica of every model of the pass, built from its spec."""

    def __init__(self, specs, index, flips, device, autocast):
        from harness.models import load_model

        self.models = [load_model(s, device, autocast) for s in specs]
        self.index = index
        self.flips = flips

    def __call__(self, batch: dict) -> dict:
        import torch

        from harness.features import encode_fused

        _fault_point()
        out = {"id": batch["id"], "ok": batch["ok"]}
        with torch.inference_mode():
            for k, (m, j, flip) in enumerate(zip(self.models, self.index, self.flips)):
                x = torch.from_numpy(np.require(batch[f"x{j}"], np.float32, ["C", "W"]))
                f = encode_fused(m, x, flip)
                out[f"f{k}"] = f.cpu().numpy().astype(np.float32, copy=False)
        return out


def extract_many_ray(
    specs: Sequence[Any],
    flips: Sequence[bool],
    pres: Sequence[Any],
    split,
    *,
    device: str = "cpu",
    autocast: str | bool | None = None,
    batch_size: int = 128,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    address: str | None = None,
    on_batch: Callable[[np.ndarray, list[np.ndarray], np.ndarray], None] | None = None,
    rows: np.ndarray | None = None,
) -> list:
    """Features of ``split`` for each (spec, flip), preprocessed with ``pres[k]``.

    ``pres[k]`` is the :class:`~harness.models.preprocess.Preprocess` of ``specs[k]`` (known to
    the driver from the model description cache, so that decoding needs no model).  ``rows``:
    only these image indices go through the pipeline (the others are resumed from the store by
    the caller and stay zero here)."""
    from harness.features import Features, Need, _preprocess_groups

    ray = ensure_ray(address)
    if not specs:
        return []

    class _P:  # _preprocess_groups reads need.model.preprocess
        def __init__(self, pre):
            self.preprocess = pre

    distinct, index = _preprocess_groups([Need(_P(p)) for p in pres])
    n = len(split)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if str(device).startswith("cuda") else 0.0
    if actors is None:
        gpus = int(ray.cluster_resources().get("GPU", 0)) if gpus_per_actor else 0
        actors = max(1, int(gpus / gpus_per_actor)) if gpus_per_actor and gpus else 1
    t0 = time.perf_counter()
    ids_todo = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    m = len(ids_todo)
    if m == 0:
        from harness.features import Features as _F

        return [
            _F(np.zeros((n, 0), dtype=np.float32), split.labels, np.ones(n, dtype=bool), [], 0.0, False)
            for _ in specs
        ]
    with _quiet_ray():
        ds = ray.data.from_items(
            [{"id": int(i)} for i in ids_todo], override_num_blocks=max(1, min(m, -(-m // batch_size)))
        )
        ds = ds.map_batches(
            _decode, fn_kwargs={"split": split, "pres": list(distinct)}, batch_size=batch_size
        )
        ds = ds.map_batches(
            _Embed,
            fn_constructor_args=(list(specs), index, list(flips), device, autocast),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor,
            **_actor_retry_args(ray),
        )
        outs: list[np.ndarray | None] = [None] * len(specs)
        valid = np.ones(n, dtype=bool)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ids = np.asarray(batch["id"], dtype=np.int64)
            feats = [batch[f"f{k}"] for k in range(len(specs))]
            for k, f in enumerate(feats):
                if outs[k] is None:
                    outs[k] = np.zeros((n, f.shape[1]), dtype=np.float32)
                outs[k][ids] = f  # type: ignore[index]
            valid[ids] = np.asarray(batch["ok"], dtype=bool)
            if on_batch is not None:
                on_batch(ids, feats, valid[ids])
    seconds = time.perf_counter() - t0
    bad = [
        str(split.items[i]) if isinstance(split.items[i], (str, os.PathLike)) else f"#{i}"
        for i in np.flatnonzero(~valid)
    ]
    result = []
    for out in outs:
        x = np.zeros((0, 0), dtype=np.float32) if out is None else out
        x[~valid] = 0.0
        result.append(
            Features(
                x,
                split.labels,
                valid.copy(),
                list(bad),
                seconds,
                False,
                loader={"engine": "ray", "actors": actors, "distinct_preprocessing": len(distinct)},
            )
        )
    return result


def extract_many_ray_needs(
    needs,
    split,
    batch_size: int = 128,
    num_workers: int | None = None,
    progress: bool = False,
    chunk_rows: int = 4096,
    on_write_error: Callable[[OSError], None] | None = None,
    address: str | None = None,
) -> list:
    """:func:`harness.features.extract_many`'s contract on Ray: resumes each need's committed
    chunks, sends only the rows some need lacks through the pipeline, and commits each chunk of
    each need to the store as soon as all its rows have streamed back."""
    from harness.features import _chunk_plan, _missing_ranges, _Rows

    n = len(split)
    rows_ = _Rows(needs, split, on_write_error)
    todo = np.flatnonzero(np.any(np.stack(rows_.lacks), axis=0)) if needs else np.zeros(0, np.int64)
    per_chunk = max(batch_size, (max(chunk_rows, 1) // batch_size) * batch_size)
    chunks = _chunk_plan(_missing_ranges(n, []), per_chunk)
    starts = np.array([a for a, _ in chunks], dtype=np.int64)
    size = np.array([e - a for a, e in chunks], dtype=np.int64)
    # rows of each chunk still to come back (a chunk is committed when it reaches 0)
    pending = np.bincount(np.searchsorted(starts, todo, side="right") - 1, minlength=len(chunks))

    def on_batch(ids: np.ndarray, feats: list[np.ndarray], ok: np.ndarray) -> None:
        for k, f in enumerate(feats):
            rows_.put(k, ids, f, ok)
        js = np.searchsorted(starts, ids, side="right") - 1
        for j, c in zip(*np.unique(js, return_counts=True)):
            pending[j] -= c
            if pending[j] == 0:
                for k in range(len(needs)):
                    rows_.commit(k, int(starts[j]), int(starts[j] + size[j]))

    model0 = needs[0].model
    got = extract_many_ray(
        [nd.model.spec for nd in needs],
        [nd.flip for nd in needs],
        [nd.model.preprocess for nd in needs],
        split,
        device=str(model0.device),
        autocast=getattr(model0, "autocast", None),
        batch_size=batch_size,
        address=address,
        on_batch=on_batch,
        rows=todo,
    )
    seconds = got[0].seconds if got else 0.0
    return rows_.finish(seconds, [{"engine": "ray", "decoded_rows": int(len(todo))}] * len(needs))
