"""Shared extraction: one split extracted together by several processes, chunk by chunk.

Under ``pytest -n N`` with fewer models than workers, the xdist scheduler leaves workers idle
(one checkpoint evaluated on ImageNet on an 8-GPU node: one scope, one busy worker).  So every
worker extracts part of each large split (the fixtures' help pass), coordinated through the
feature store's *chunk claims* (:mod:`harness.store`): a process claims a chunk of the global
chunk grid before decoding it, commits it exactly as a single process does, and releases the
claim.  :func:`harness.features.extract_many` runs a :class:`SharedPass` when given a
:class:`Share`:

- the DataLoader's batch sampler is lazy: it claims a chunk (for every model of the pass that
  lacks it) when the loader first asks for the chunk's rows, and skips the chunks that are
  committed or held by other live processes.  It never blocks.
- ``wait=False`` (help): one pass; the entries that are then complete are finalised from their
  chunks; nothing is returned.
- ``wait=True``: after a pass, wait (between passes, holding no uncommitted rows, so that two
  waiting processes never wait on each other) until every chunk is committed, taking over the
  claims of dead or silent holders and computing them in another pass; then read the others'
  chunks (a damaged one is reported once, removed and recomputed) and finalise the entries
  once among processes (:meth:`harness.store.ChunkWriter.finish_shared`).
- Batches are those of a single-process run (same grid, same batch boundaries), so every
  feature is bit-identical to a single-process extraction.
- A claim that cannot be written (full or read-only cache) ends the sharing: the process
  extracts the split alone, in memory, as an unwritable cache always does.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.features import (
    Features,
    Need,
    _bar,
    _chunk_plan,
    _encode,
    _item_name,
    _loader,
    _loader_plan,
    _MultiDataset,
    _preprocess_groups,
    _watched,
    extract_many,
    grid_rows,
)
from harness.store import MANIFEST, ChunkWriter, DamagedEntry, LockTimeout, Store, chunk_name, read_claim


@dataclass
class Share:
    """One split extracted together by several processes (``pytest -n N`` with fewer models than
    workers), at chunk granularity, through the store's chunk claims (:mod:`harness.store`).

    ``wait=True``: return every need's features -- compute the chunks this process can claim,
    then wait for those other live processes hold (taking over the claims of dead or silent
    holders), read them, and finalise the entries.  ``wait=False`` (a *help* pass): compute the
    chunks that can be claimed, finalise the entries if they are then complete, and return no
    features.  ``decoded`` counts the rows this process decoded (read it after the call)."""

    store: Store
    wait: bool = True
    poll: float = 0.05  # first wait between looks at the others' progress (grows to 0.5 s)
    first_report: float | None = None  # report a wait after this long (default: 5 s at most)
    decoded: int = 0


class _Unshared(Exception):
    """No claim could be written (full or read-only cache): the split is extracted alone."""


class SharedPass:
    """:func:`extract_many` over the chunks of the global grid this process claims.

    The DataLoader's batch sampler is lazy: it claims a chunk (for every need that lacks it)
    when the loader first asks for the chunk's rows, skips chunks that are committed or held by
    others, and never blocks -- waiting for other processes happens between passes, when this
    process holds no uncommitted rows (so two waiting processes never wait on each other).
    Batches are those of a single-process run: same grid, same batch boundaries, so features
    are bit-identical."""

    def __init__(self, needs, split, batch_size, num_workers, progress, chunk_rows, on_write_error, share):
        self.needs, self.split, self.share = needs, split, share
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        self.chunk_rows, self.on_write_error = chunk_rows, on_write_error
        self.n = len(split)
        self.rows = grid_rows(chunk_rows, batch_size)
        self.grid = _chunk_plan([(0, self.n)], self.rows) if self.n else []
        self.writers: list[ChunkWriter] = [nd.writer for nd in needs]
        self.names = [chunk_name(a, e) for a, e in self.grid]
        K = len(needs)
        self.have: list[set[int]] = [set() for _ in range(K)]  # chunks whose rows we hold (or wrote)
        self.finished = [False] * K  # entry finalised (by anyone): read it whole
        self.read_entry: list[tuple[np.ndarray, np.ndarray, list[str]] | None] = [None] * K
        self.outs: list[np.ndarray | None] = [None] * K  # wait mode: the whole split
        self.valids = [np.ones(self.n, dtype=bool) for _ in range(K)] if share.wait else []
        self.claims: dict[int, dict[int, Any]] = {}  # chunk -> need -> Claim, not yet committed
        self.ready: dict[int, dict[int, Any]] = {}  # claimed between passes, for the next pass
        self.decoded = 0

    # ------------------------------------------------------------------- claiming
    def _claim(self, j: int, ks: list[int]) -> dict[int, Any]:
        got = {}
        a, e = self.grid[j]
        for k in ks:
            try:
                c = self.writers[k].claim(a, e)
            except OSError as err:
                if self.on_write_error is not None:
                    self.on_write_error(err)
                raise _Unshared from None
            if c is not None:
                got[k] = c
        return got

    def _open(self, j: int) -> list[int]:
        """Needs that still lack chunk ``j`` (not held, not committed, entry not finished)."""
        ks = []
        for k in range(len(self.needs)):
            if j in self.have[k] or self.finished[k]:
                continue
            if (self.writers[k].dir / MANIFEST).exists() and self.writers[k].is_finished():
                self.finished[k] = True
                continue
            ks.append(k)
        return ks

    def _sampler(self, issued: list[list[int]]) -> Any:
        bs = self.batch_size
        for j, (a, e) in enumerate(self.grid):
            got = self.ready.pop(j, None) or (self._claim(j, ks) if (ks := self._open(j)) else {})
            if not got:
                continue
            self.claims[j] = got
            for s in range(a, e, bs):
                b = list(range(s, min(s + bs, e)))
                issued.append(b)
                yield b

    def _release(self) -> None:
        for got in [*self.claims.values(), *self.ready.values()]:
            for c in got.values():
                c.release()
        self.claims.clear()
        self.ready.clear()

    # ---------------------------------------------------------------------- passes
    def _pass(self, ds, index, workers, on_cuda, bar) -> None:
        import torch

        issued: list[list[int]] = []
        buf: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        beat = min(5.0, self.share.store.lock_timeout / 4)
        last_beat = time.monotonic()
        with torch.inference_mode():
            # the loader asks for workers x prefetch batches ahead, and each is claimed when
            # asked for: about one chunk ahead at most, so that the workers end close together
            prefetch = max(1, min(4, self.rows // max(1, workers * self.batch_size)))
            loader = _loader(ds, self._sampler(issued), workers, on_cuda, prefetch)
            for images, idx, ok in _watched(loader, issued, self.split):
                idx = idx.numpy()
                okb = ok.numpy().astype(bool)
                j = int(idx[0]) // self.rows
                a, e = self.grid[j]
                for k in self.claims[j]:
                    f = _encode(self.needs[k], images[index[k]])
                    if (j, k) not in buf:
                        buf[j, k] = (np.zeros((e - a, f.shape[1]), np.float32), np.ones(e - a, bool))
                    x, v = buf[j, k]
                    x[idx - a] = f
                    v[idx - a] = okb
                self.decoded += len(idx)
                if bar is not None:
                    bar.update(len(idx))
                if idx[-1] + 1 == e:
                    got = self.claims[j]
                    try:
                        for k in got:
                            self._commit(j, k, *buf.pop((j, k)))
                    finally:
                        for c in got.values():
                            c.release()
                        del self.claims[j]
                if time.monotonic() - last_beat >= beat:  # heartbeat: we are alive and working
                    last_beat = time.monotonic()
                    for got in self.claims.values():
                        for c in got.values():
                            c.touch()

    def _commit(self, j: int, k: int, x: np.ndarray, v: np.ndarray) -> None:
        a, e = self.grid[j]
        x[~v] = 0.0
        bad = [_item_name(self.split, int(i)) for i in a + np.flatnonzero(~v)]
        try:
            self.writers[k].write_chunk(a, x, v, bad)
        except OSError as err:
            if not self.writers[k].is_finished():  # (a duplicate of a finished entry: harmless)
                if self.on_write_error is not None:
                    self.on_write_error(err)
                raise _Unshared from None
        self.have[k].add(j)
        if self.share.wait:
            self._put(k, a, e, x, v)

    def _put(self, k: int, a: int, e: int, x: np.ndarray, v: np.ndarray) -> None:
        out = self.outs[k]
        if out is None:
            out = self.outs[k] = np.zeros((self.n, x.shape[1]), dtype=np.float32)
        if x.shape[1] != out.shape[1]:
            raise DamagedEntry(f"a chunk of width {x.shape[1]} among chunks of width {out.shape[1]}")
        out[a:e] = x
        self.valids[k][a:e] = v

    # ---------------------------------------------------------------------- waiting
    def _settle(self) -> bool:
        """Wait until every chunk not ours is committed (False), or until some could be claimed
        -- a dead or silent holder's, or one released uncommitted (True: compute them)."""
        store = self.share.store
        t0 = last = time.monotonic()
        seen: Any = None
        first = self.share.first_report
        first = min(5.0, store.wait_report_every) if first is None else first
        reported = t0 - store.wait_report_every + first
        delay = self.share.poll
        while True:
            pending: dict[tuple[int, int], Path | None] = {}
            written = 0
            for k, w in enumerate(self.writers):
                if self.finished[k] or w.is_finished():
                    self.finished[k] = True
                    continue
                records, claims = w.listing()
                written += len(records)
                for j, name in enumerate(self.names):
                    if j not in self.have[k] and name not in records:
                        pending[k, j] = claims.get(name)
            if not pending:
                return False
            holders: dict[str, float] = {}
            for (k, j), p in pending.items():
                info = None if p is None else _holder(p)
                if info is not None and not info.stale(store.lock_timeout):
                    holders[info.describe()] = max(holders.get(info.describe(), 0.0), info.touched)
                    continue
                got = self._claim(j, [k])  # unclaimed, or its holder is dead or silent
                if got:
                    self.ready.setdefault(j, {}).update(got)
            if self.ready:
                return True
            now = time.monotonic()
            progress = (written, max(holders.values(), default=0.0))
            if progress != seen:
                seen, last = progress, now
            where = self.writers[0].dir if len(self.writers) == 1 else self.writers[0].dir.parent
            who = ", ".join(sorted(holders)) or "no process"
            if now - last >= store.lock_timeout:
                raise LockTimeout(
                    f"feature cache: gave up after {now - t0:.0f} s waiting for {len(pending)} "
                    f"chunk(s) of {where}, claimed by {who} with no progress for {now - last:.0f} s "
                    f"(--lock-timeout {store.lock_timeout:g}); is another run stuck on this cache?"
                )
            if now - reported >= store.wait_report_every:
                reported = now
                store.notify(
                    f"feature cache: waiting for {len(pending)} chunk(s) of {where}, claimed by "
                    f"{who} ({now - t0:.0f} s; {written} chunk(s) written; --lock-timeout "
                    f"{store.lock_timeout:g} s without progress)"
                )
            time.sleep(delay)
            delay = min(0.5, delay * 1.5)

    def _assemble(self) -> bool:
        """Read the chunks others committed (or the entry someone finalised); False when some
        rows are still missing (a damaged chunk was removed: compute it in another pass)."""
        store = self.share.store
        complete = True
        for k, w in enumerate(self.writers):
            if self.read_entry[k] is not None or len(self.have[k]) == len(self.grid):
                continue
            if self.finished[k] or w.is_finished():
                got = store.read(w.kind, w.key)
                if got is not None:
                    arrays, meta = got
                    x, v = arrays["x"], np.asarray(arrays["valid"], dtype=bool)
                    if x.ndim == 2 and len(x) == self.n and len(v) == self.n:
                        self.read_entry[k] = (x, v, [str(b) for b in meta.get("bad_items", [])])
                        continue
                    store.warn(
                        f"feature cache: damaged entry {w.dir / 'manifest.json'} (wrong row count); recomputing"
                    )
                    store.discard(w.kind, w.key, keep_chunks=True)
                self.finished[k] = False
            missing = {self.grid[j]: j for j in range(len(self.grid)) if j not in self.have[k]}
            for c in w.completed(only=set(missing)):
                try:
                    self._put(k, c.start, c.stop, np.asarray(c.x), c.valid)
                except DamagedEntry as e:
                    store.warn(
                        f"feature cache: damaged chunk {w.record(c.start, c.stop)} ({e}); recomputing its rows"
                    )
                    for q in (w.record(c.start, c.stop), w.record(c.start, c.stop).with_suffix(".npy")):
                        with contextlib.suppress(OSError):
                            q.unlink()
                    continue
                self.have[k].add(missing[(c.start, c.stop)])
            if len(self.have[k]) != len(self.grid):
                complete = False
        return complete

    # ------------------------------------------------------------------------- run
    def run(self) -> list[Features]:
        import torch

        needs, split, share = self.needs, self.split, self.share
        pres, index = _preprocess_groups(needs)
        ds = _MultiDataset(split, [p.transform() for p in pres], [p.size for p in pres])
        records = self.writers[0].listing()[0]
        todo = sum(e - a for (a, e), name in zip(self.grid, self.names) if name not in records)
        threads_before = torch.get_num_threads()
        workers, threads, on_cuda = _loader_plan(needs, ds, index, todo, self.num_workers, self.batch_size)
        bar = _bar(self.progress, todo, needs, split, self.n - todo)
        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        try:
            while True:
                self._pass(ds, index, workers, on_cuda, bar)
                if not share.wait:
                    break  # help pass: the chunks others hold are theirs to finish
                if self._settle():
                    continue  # claimed chunks of dead or silent holders: compute them
                if self._assemble():
                    break
        except _Unshared:
            self._release()
            share.decoded += self.decoded
            if not share.wait:
                return []
            alone = [Need(nd.model, nd.flip, None) for nd in needs]
            got = extract_many(
                alone, split, self.batch_size, self.num_workers, self.progress, self.chunk_rows
            )
            share.decoded += int(got[0].loader.get("decoded_rows", 0)) if got else 0
            return got
        finally:
            self._release()
            torch.set_num_threads(threads_before)
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        share.decoded += self.decoded
        loader = {
            "workers": workers,
            "threads": threads,
            "decoded_rows": self.decoded,
            "shared_models": len(needs),
            "distinct_preprocessing": len(pres),
            "shared_split": True,
        }
        if not share.wait:
            self._finish_from_chunks(seconds)
            return []
        return self._finish(seconds, loader)

    def _finish_from_chunks(self, seconds: float) -> None:
        """Help pass: the entries whose chunks are now all committed are finalised from them."""
        for k, w in enumerate(self.writers):
            records = w.listing()[0]
            if self.finished[k] or any(name not in records for name in self.names):
                continue
            try:
                w.finish_shared({"seconds": seconds, "n_rows": self.n})
            except ValueError:
                pass  # a chunk was damaged or went away: left to the reader
            except OSError as err:
                if self.on_write_error is not None:
                    self.on_write_error(err)

    def _finish(self, seconds: float, loader: dict) -> list[Features]:
        result = []
        for k, w in enumerate(self.writers):
            entry = self.read_entry[k]
            if entry is not None:
                x, valid, bad = entry
            else:
                out = self.outs[k]
                x = out if out is not None else np.zeros((self.n, 0) if self.n else (0, 0), dtype=np.float32)
                valid = self.valids[k]
                bad = [_item_name(self.split, int(i)) for i in np.flatnonzero(~valid)]
                try:
                    w.finish_shared({"bad_items": bad, "seconds": seconds, "n_rows": self.n}, x, valid)
                except OSError as err:
                    if self.on_write_error is not None:
                        self.on_write_error(err)
            f = Features(
                x,
                self.split.labels,
                valid,
                bad,
                seconds,
                False,
                loader={**loader, "resumed_rows": self.n - self.decoded},
            )
            result.append(f)
        return result


def _holder(path: Path) -> Any:
    try:
        return read_claim(path)
    except OSError:
        return None
