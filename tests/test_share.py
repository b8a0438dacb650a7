"""One split extracted together by several processes, chunk by chunk (chunk claims in
:mod:`harness.store`, :class:`harness.features.Share`): each process decodes a part, every row
is decoded once, and the features are those of a single-process extraction to the bit.  Claims
of dead or silent holders are taken over; a kill -9 mid-split, a damaged chunk and an
unwritable cache keep their single-process guarantees.

Run as a script (``python tests/test_share.py CACHE IMAGES MODE DELAY BARRIER``) it is the
cooperating process the tests start (and kill).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from test_faults import BATCH, CHUNK, N_IMAGES, WideModel, make_images  # noqa: E402


def indexed_split(paths: list[str], decoded: list[int] | None = None, barrier: Path | None = None):
    """A split whose reader records the rows it decodes; with ``barrier``, the first decode
    waits (up to 60 s) until two processes have reached it, so that both take part."""
    from harness.data.base import Split, decode_image

    where = {p: i for i, p in enumerate(paths)}
    first = [True]

    def reader(item):
        if barrier is not None and first[0]:
            first[0] = False
            (barrier / str(os.getpid())).touch()
            t0 = time.monotonic()
            while len(list(barrier.iterdir())) < 2 and time.monotonic() - t0 < 60:
                time.sleep(0.01)
        if decoded is not None:
            decoded.append(where[item])
        return decode_image(item)

    return Split("test", list(paths), np.arange(len(paths)) % 3, reader=reader)


def worker(argv: list[str]) -> None:
    """CACHE IMAGES MODE DELAY BARRIER: extract cooperatively (MODE wait or help), print the rows
    decoded as JSON; with wait, also save the features next to the cache."""
    import torch

    from harness.features import FeatureCache

    torch.set_num_threads(1)
    cache_dir, img_dir, mode, delay, barrier = argv[:5]
    paths = make_images(Path(img_dir))
    decoded: list[int] = []
    split = indexed_split(paths, decoded, Path(barrier) if barrier != "-" else None)
    cache = FeatureCache(cache_dir, chunk_rows=CHUNK, share=True)
    if mode == "help":
        n = cache.help_many([(WideModel(delay=float(delay)), False)], split, batch_size=BATCH, num_workers=0)
        assert n == len(decoded)
    else:
        f = cache.features(WideModel(delay=float(delay)), split, batch_size=BATCH, num_workers=0)
        np.save(Path(cache_dir) / f"x-{os.getpid()}.npy", np.asarray(f.x))
    print(json.dumps({"pid": os.getpid(), "decoded": decoded, "warnings": cache.warnings}), flush=True)


def _spawn(cache: Path, images: Path, mode: str = "wait", delay: float = 0.0, barrier: Path | None = None):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, __file__, str(cache), str(images), mode, str(delay), str(barrier or "-")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)


def _result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("share-images")
    return d, make_images(d)


@pytest.fixture(scope="module")
def clean(images, tmp_path_factory):
    """The single-process extraction (no sharing) everything is compared with."""
    from harness.features import FeatureCache

    return FeatureCache(tmp_path_factory.mktemp("clean"), chunk_rows=CHUNK).features(
        WideModel(), indexed_split(images[1]), batch_size=BATCH, num_workers=0)


def _leftovers(cache: Path) -> list[Path]:
    return [*cache.rglob("*.claim"), *cache.rglob("*.tmp"), *cache.rglob("chunks")]


def _entry_x(cache: Path) -> np.ndarray:
    """The finished entry's features, checked by the store."""
    from harness.store import Store

    [d] = [p.parent for p in (cache / "features").rglob("manifest.json")]
    got = Store(cache, warn=pytest.fail).read("features", d.name)
    assert got is not None
    return np.asarray(got[0]["x"])


# ----------------------------------------------------------------------- two processes


@pytest.mark.parametrize("modes", [("wait", "wait"), ("help", "wait")])
def test_two_processes_share_a_split_each_row_once_bit_identical(images, clean, tmp_path, modes):
    img_dir, paths = images
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    procs = [_spawn(cache, img_dir, mode, 0.02, barrier) for mode in modes]
    results = [_result(p) for p in procs]
    rows = [set(r["decoded"]) for r in results]
    assert all(0 < len(r) < N_IMAGES for r in rows), [len(r) for r in rows]  # strict subsets
    assert rows[0].isdisjoint(rows[1]) and rows[0] | rows[1] == set(range(N_IMAGES))  # all, once
    assert sum(len(r["decoded"]) for r in results) == N_IMAGES
    for r in rows:  # whole chunks of the global grid
        assert all(set(range(c * CHUNK, c * CHUNK + CHUNK)) <= r for c in {i // CHUNK for i in r})
    for r, mode in zip(results, modes):
        assert r["warnings"] == []
        if mode == "wait":
            np.testing.assert_array_equal(np.load(cache / f"x-{r['pid']}.npy"), clean.x)
    np.testing.assert_array_equal(_entry_x(cache), clean.x)
    assert not _leftovers(cache)


def test_a_later_reader_finds_the_shared_entry_finished(images, clean, tmp_path):
    """Two helpers alone (nobody waits): whoever commits the last chunk finalises the entry."""
    from harness.features import FeatureCache

    img_dir, paths = images
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    procs = [_spawn(cache, img_dir, "help", 0.02, barrier) for _ in range(2)]
    assert sum(len(_result(p)["decoded"]) for p in procs) == N_IMAGES
    assert len(list(cache.rglob("manifest.json"))) == 1 and not _leftovers(cache)
    decoded: list[int] = []
    c = FeatureCache(cache, chunk_rows=CHUNK, share=True)
    f = c.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
    assert f.from_cache and decoded == [] and c.warnings == []
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)


def test_loader_workers_with_the_lazy_claiming_sampler(images, clean, tmp_path):
    """DataLoader worker processes ask for batches ahead: claims follow, features are the same."""
    from harness.features import FeatureCache

    _, paths = images
    c = FeatureCache(tmp_path / "cache", chunk_rows=CHUNK, share=True)
    f = c.features(WideModel(), indexed_split(paths), batch_size=BATCH, num_workers=2)
    assert f.loader["workers"] == 2 and f.loader["decoded_rows"] == N_IMAGES
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    assert not _leftovers(tmp_path / "cache")


# ------------------------------------------------------------------- claims taken over


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _claim_file(cache: Path, split, start: int, stop: int, pid: int, started: str | None) -> Path:
    from harness.features import FeatureCache

    c = FeatureCache(cache, chunk_rows=CHUNK)
    w = c.store.open_writer(c.key(WideModel(), split, False), len(split))
    w.chunk_dir.mkdir(parents=True, exist_ok=True)
    path = w.claim_path(start, stop)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": started,
                                "since": time.time()}))
    return path


def test_claims_of_dead_or_reused_pids_are_taken_over(images, clean, tmp_path):
    from harness.features import FeatureCache
    from harness.store import process_start

    _, paths = images
    cache = tmp_path / "cache"
    split = indexed_split(paths)
    dead = _claim_file(cache, split, 0, CHUNK, _dead_pid(), None)
    # a live pid whose process started at another time than the claimant's: the pid was reused
    parent = os.getppid()
    assert process_start(parent) is not None
    reused = _claim_file(cache, split, CHUNK, 2 * CHUNK, parent, "0:1")
    decoded: list[int] = []
    c = FeatureCache(cache, chunk_rows=CHUNK, share=True, lock_timeout=600)
    c.store.notify = lambda m: pytest.fail(f"waited: {m}")  # nothing to wait for
    t0 = time.monotonic()
    f = c.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
    assert time.monotonic() - t0 < 30
    assert sorted(decoded) == list(range(N_IMAGES)) and c.warnings == []
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    assert not dead.exists() and not reused.exists() and not _leftovers(cache)


def test_a_silent_live_holder_is_waited_for_then_taken_over(images, clean, tmp_path):
    """A live process that claimed a chunk and stopped working on it (no heartbeat): the reader
    says who holds it while waiting, and takes the chunk over after --lock-timeout."""
    from harness.features import FeatureCache
    from harness.store import process_start

    _, paths = images
    cache = tmp_path / "cache"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        split = indexed_split(paths)
        claim = _claim_file(cache, split, 2 * CHUNK, 3 * CHUNK, sleeper.pid, process_start(sleeper.pid))
        c = FeatureCache(cache, chunk_rows=CHUNK, share=True, lock_timeout=2.0)
        c.store.wait_report_every = 0.2
        said: list[str] = []
        c.store.notify = said.append
        decoded: list[int] = []
        t0 = time.monotonic()
        f = c.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
        waited = time.monotonic() - t0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert waited >= 1.0
    assert said and f"claimed by pid {sleeper.pid} on {socket.gethostname()}" in said[0]
    assert "--lock-timeout 2 s" in said[0]
    assert sorted(decoded) == list(range(N_IMAGES))  # its chunk too, once taken over
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    assert not claim.exists() and not _leftovers(cache)


def test_kill_9_of_a_cooperating_process_the_other_finishes(images, clean, tmp_path):
    """kill -9 of a process in the middle of its chunk: its committed chunks are kept, its claim
    (dead pid) is taken over, the survivor's features equal a clean run's."""
    from harness.features import FeatureCache

    img_dir, paths = images
    cache = tmp_path / "cache"
    proc = _spawn(cache, img_dir, "help", 0.1)

    def working() -> bool:  # two chunks committed, and a claim on one in progress
        records = {p.stem for p in cache.rglob("c*.json")}
        return len(records) >= 2 and any(p.stem not in records for p in cache.rglob("*.claim"))

    t0 = time.monotonic()
    while not working():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() - t0 < 60
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(list(cache.rglob("c*.json")))
    records = {p.stem for p in cache.rglob("c*.json")}
    assert any(p.stem not in records for p in cache.rglob("*.claim"))  # died holding a claim
    decoded: list[int] = []
    c = FeatureCache(cache, chunk_rows=CHUNK, share=True, lock_timeout=600)
    f = c.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
    assert len(decoded) == N_IMAGES - committed * CHUNK and c.warnings == []
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    assert not _leftovers(cache)


def test_opening_the_cache_sweeps_dead_claims_and_leftover_chunks(images, tmp_path):
    from harness.features import FeatureCache
    from harness.store import Claim, Store, process_start

    _, paths = images
    cache = tmp_path / "cache"
    split = indexed_split(paths)
    live = _claim_file(cache, split, CHUNK, 2 * CHUNK, os.getpid(), process_start(os.getpid()))
    held = Claim(live, live.stat().st_ino)  # this process's own, live claim
    dead = _claim_file(cache, split, 0, CHUNK, _dead_pid(), None)  # (opening a cache sweeps)
    swept = Store(cache, warn=lambda m: None).swept
    assert dead in swept and not dead.exists() and live.exists()
    held.release()
    assert not live.exists()
    # a finished entry with a chunk folder left by a duplicate writer: removed when no claim
    FeatureCache(cache, chunk_rows=CHUNK).features(WideModel(), split, batch_size=BATCH, num_workers=0)
    [entry] = [p.parent for p in cache.rglob("manifest.json")]
    (entry / "chunks").mkdir()
    (entry / "chunks" / "c0000000000-0000000016.json").write_text("{}")
    Store(cache, warn=lambda m: None)
    assert not (entry / "chunks").exists() and (entry / "manifest.json").exists()


def test_a_claim_is_atomic_and_exclusive(tmp_path):
    from harness.store import Store

    s = Store(tmp_path, warn=lambda m: None)
    w = s.open_writer("k" * 32, 100)
    w.chunk_dir.mkdir(parents=True)
    first = w.claim(0, 10)
    assert first is not None and w.claim(0, 10) is None  # held (by a live process: us)
    d = json.loads(w.claim_path(0, 10).read_text())
    assert d["pid"] == os.getpid() and d["host"] == socket.gethostname() and d["started"]
    first.release()
    again = w.claim(0, 10)
    assert again is not None
    w.write_chunk(0, np.zeros((10, 2), np.float32), np.ones(10, bool), [])
    again.release()
    assert w.claim(0, 10) is None  # committed: nothing to claim
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.claim"))


# ------------------------------------------------------------- single-process guarantees


def test_damaged_chunk_of_another_process_is_recomputed_with_one_warning(images, clean, tmp_path):
    from test_faults import _flip

    from harness.features import FeatureCache

    _, paths = images
    cache = tmp_path / "cache"
    c = FeatureCache(cache, chunk_rows=CHUNK, share=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        c.help_many([(WideModel(crash_at=7), False)], indexed_split(paths), batch_size=BATCH, num_workers=0)
    records = sorted(cache.rglob("c*.json"))
    assert len(records) == 3 and not list(cache.rglob("*.claim"))  # released on the way out
    _flip(records[1].with_suffix(".npy"), 5, 7)
    decoded: list[int] = []
    c2 = FeatureCache(cache, chunk_rows=CHUNK, share=True)
    f = c2.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    assert len(c2.warnings) == 1 and str(records[1]) in c2.warnings[0], c2.warnings
    assert len(decoded) == N_IMAGES - 2 * CHUNK  # the two intact chunks are read, not decoded
    assert not _leftovers(cache)


@pytest.mark.parametrize("err", ["ENOSPC", "EROFS"])
def test_unwritable_cache_while_sharing_keeps_features_in_memory(images, clean, tmp_path, monkeypatch, err):
    import errno

    from harness import _io
    from harness.features import FeatureCache

    _, paths = images
    calls = [0]
    real = os.replace

    def failing(a, b):
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)), str(b))
        return real(a, b)

    monkeypatch.setattr(_io.os, "replace", failing)
    c = FeatureCache(tmp_path / "cache", chunk_rows=CHUNK, share=True)
    f = c.features(WideModel(), indexed_split(paths), batch_size=BATCH, num_workers=0)
    monkeypatch.setattr(_io.os, "replace", real)
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    assert c.warnings == [f"features not cached: {tmp_path / 'cache'}: {os.strerror(getattr(errno, err))}"]
    assert not list((tmp_path / "cache").rglob("manifest.json"))
    assert not list((tmp_path / "cache").rglob("*.tmp")) and not list((tmp_path / "cache").rglob("*.claim"))
    c2 = FeatureCache(tmp_path / "cache", chunk_rows=CHUNK, share=True)  # resumes what was written
    f2 = c2.features(WideModel(), indexed_split(paths), batch_size=BATCH, num_workers=0)
    np.testing.assert_array_equal(np.asarray(f2.x), clean.x)
    assert c2.warnings == []


def test_refresh_while_sharing_spares_what_this_run_wrote(images, clean, tmp_path):
    """--refresh-features under -n N: an entry older than the run is recomputed; chunks and
    entries that this run's processes wrote are kept."""
    from harness.features import FeatureCache

    _, paths = images
    cache = tmp_path / "cache"
    FeatureCache(cache, chunk_rows=CHUNK).features(WideModel(), indexed_split(paths), batch_size=BATCH)
    run_start = time.time()
    time.sleep(0.05)
    decoded: list[int] = []
    a = FeatureCache(cache, chunk_rows=CHUNK, share=True, refresh=True, refresh_before=run_start)
    fa = a.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
    assert len(decoded) == N_IMAGES and not fa.from_cache  # the old entry was recomputed
    decoded.clear()
    b = FeatureCache(cache, chunk_rows=CHUNK, share=True, refresh=True, refresh_before=run_start)
    fb = b.features(WideModel(), indexed_split(paths, decoded), batch_size=BATCH, num_workers=0)
    assert decoded == [] and fb.from_cache  # another process of the same run: kept
    np.testing.assert_array_equal(np.asarray(fb.x), clean.x)


if __name__ == "__main__":
    worker(sys.argv[1:])
