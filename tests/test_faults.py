"""Fault injection on the feature store: kill -9 during extraction, damaged entries of every
kind, concurrent writers without locks, a full or read-only filesystem.  Every case ends with
the rerun's features equal, to the bit, to a clean run's.

Run as a script (``python tests/test_faults.py CACHE IMAGES ...``) it is the extraction worker
the tests start and kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_IMAGES = 96
BATCH = 8
CHUNK = 16


class WideModel:
    """Deterministic features: per-quadrant channel means (12 values) tiled to ``dim`` columns,
    each copy scaled by its column block; ``delay`` seconds per batch make kills land mid-split."""

    def __init__(self, dim: int = 24, delay: float = 0.0, fingerprint: str = "wide",
                 crash_at: int | None = None):
        from harness.models.preprocess import Preprocess

        self.id = "wide"
        self.device = "cpu"
        self.autocast = False
        self.fingerprint = f"{fingerprint}-{dim}"
        self.dim = dim
        self.delay = delay
        self.crash_at = crash_at  # raise on this call (an in-process crash mid-split)
        self.calls = 0
        self.preprocess = Preprocess(size=8, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                                     std=(1.0, 1.0, 1.0), resize="squash")

    def encode_image(self, x):
        import torch

        self.calls += 1
        if self.crash_at is not None and self.calls >= self.crash_at:
            raise RuntimeError("simulated crash")
        if self.delay:
            time.sleep(self.delay)
        h = x.shape[-1] // 2
        q = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
        f = torch.cat([t.mean(dim=(-1, -2)) for t in q], dim=1)
        reps = -(-self.dim // f.shape[1])
        scale = torch.arange(1, reps + 1, dtype=f.dtype).repeat_interleave(f.shape[1])
        return (f.repeat(1, reps) * scale)[:, : self.dim]


def make_images(folder: Path, n: int = N_IMAGES) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = folder / f"{i:04d}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def make_split(paths: list[str], counter: list[int] | None = None):
    from harness.data.base import Split, decode_image

    def reader(item):
        if counter is not None:
            counter[0] += 1
        return decode_image(item)

    return Split("test", list(paths), np.arange(len(paths)) % 3, reader=reader)


def tiny_model(folder: Path):
    from harness.models import load_model
    from harness.suite import ModelSpec

    return load_model(ModelSpec(id="tiny", arch=f"local-dir:{folder}", source="faults"), "cpu")


def worker(argv: list[str]) -> None:
    """CACHE IMAGES MODEL DELAY [nolock]: extract the split into CACHE (the tests kill this)."""
    import torch

    from harness.features import FeatureCache

    torch.set_num_threads(1)
    cache_dir, img_dir, model_arg, delay = argv[:4]
    paths = make_images(Path(img_dir))
    if model_arg.startswith("tiny:"):
        model = tiny_model(Path(model_arg[5:]))
        inner = model.encode_image

        def slow(x):
            time.sleep(float(delay))
            return inner(x)
        model.encode_image = slow
    else:
        model = WideModel(delay=float(delay))
    cache = FeatureCache(cache_dir, chunk_rows=CHUNK)
    if "nolock" in argv[4:]:  # a network filesystem where locks do nothing
        import contextlib

        cache.store.lock = lambda kind, key: contextlib.nullcontext()
    f = cache.features(model, make_split(paths), batch_size=BATCH, num_workers=0)
    print(f"done {len(f)}", flush=True)


def _spawn(cache: Path, images: Path, model: str = "wide", delay: float = 0.0, *extra: str):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, __file__, str(cache), str(images), model, str(delay),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=ROOT)


def _chunks(cache: Path) -> list[Path]:
    return list((cache / "features").glob("*/*/chunks/*.json"))


def _clean(images: list[str], model, tmp: Path):
    from harness.features import FeatureCache

    return FeatureCache(tmp, chunk_rows=CHUNK).features(model, make_split(images), batch_size=BATCH,
                                                        num_workers=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("faults-images")
    return d, make_images(d)


@pytest.fixture(scope="module")
def clean_run(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("clean-cache")
    return _clean(images[1], WideModel(), d), d


@pytest.fixture
def clean_wide(clean_run):
    return clean_run[0]


# ------------------------------------------------------------------------------ kill -9

def _kill_when(proc: subprocess.Popen, cache: Path, min_chunks: int, timeout: float = 60.0) -> int:
    t0 = time.monotonic()
    while len(_chunks(cache)) < min_chunks:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"worker ended before the kill: {err.decode()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("worker made no progress")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(_chunks(cache))


def test_kill_at_half_resumes_from_completed_chunks_tiny_clip(images, tmp_path):
    """Target "kill and resume": kill -9 at 50 %, rerun decodes <= 60 % of the split, same bits."""
    from harness.features import FeatureCache
    from tests.tiny_clip import make_tiny_clip

    folder = make_tiny_clip(tmp_path / "tiny")
    img_dir, paths = images
    cache = tmp_path / "cache"
    proc = _spawn(cache, img_dir, f"tiny:{folder}", 0.15)
    done = _kill_when(proc, cache, min_chunks=N_IMAGES // CHUNK // 2)
    assert proc.returncode == -signal.SIGKILL
    assert not list(cache.rglob("manifest.json"))  # nothing finished: only chunks survive

    model = tiny_model(folder)
    counter = [0]
    c = FeatureCache(cache, chunk_rows=CHUNK)
    f = c.features(model, make_split(paths, counter), batch_size=BATCH, num_workers=0)
    assert counter[0] <= 0.6 * N_IMAGES, (counter[0], done)
    assert counter[0] == N_IMAGES - min(done, N_IMAGES // CHUNK) * CHUNK
    assert f.loader["resumed_rows"] == N_IMAGES - counter[0]
    clean = _clean(paths, model, tmp_path / "clean")
    np.testing.assert_array_equal(np.asarray(f.x), clean.x)
    np.testing.assert_array_equal(f.valid, clean.valid)
    again = FeatureCache(cache, chunk_rows=CHUNK).features(model, make_split(paths), batch_size=BATCH)
    assert again.from_cache and np.array_equal(np.asarray(again.x), clean.x)
    assert not list(cache.rglob("*.tmp")) and not _chunks(cache)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_at_a_random_point_then_rerun_equals_clean(images, clean_wide, tmp_path, seed):
    from harness.features import FeatureCache

    img_dir, paths = images
    cache = tmp_path / "cache"
    proc = _spawn(cache, img_dir, "wide", 0.02)
    # a random moment between start-up and (usually) the end of the split
    deadline = time.monotonic() + 60
    while not (cache / "features").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    counter = [0]
    c = FeatureCache(cache, chunk_rows=CHUNK)
    f = c.features(WideModel(), make_split(paths, counter), batch_size=BATCH, num_workers=0)
    np.testing.assert_array_equal(np.asarray(f.x), clean_wide.x)
    if f.from_cache:  # killed after the commit
        assert counter[0] == 0
    else:
        assert counter[0] == N_IMAGES - f.loader["resumed_rows"]
    assert c.warnings == []  # a kill never leaves something that reads as damaged
    assert not list(cache.rglob("*.tmp"))


def test_two_writers_without_locks_waste_work_but_never_corrupt(images, clean_wide, tmp_path):
    from harness.features import FeatureCache

    img_dir, paths = images
    cache = tmp_path / "cache"
    procs = [_spawn(cache, img_dir, "wide", 0.01, "nolock") for _ in range(2)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    c = FeatureCache(cache, chunk_rows=CHUNK)
    f = c.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
    assert f.from_cache and c.extractions == 0 and c.warnings == []
    np.testing.assert_array_equal(np.asarray(f.x), clean_wide.x)


# ------------------------------------------------------------------------ damaged entries

def _entry(cache: Path, kind: str = "features") -> Path:
    [d] = [p for p in (cache / kind).glob("*/*") if (p / "manifest.json").exists()]
    return d


def _flip(path: Path, n: int, seed: int, skip_header: bool = True) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    lo = 128 if skip_header and len(data) > 256 else 0
    for pos in rng.sample(range(lo, len(data)), n):
        data[pos] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def _zero_payload(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:128] + bytes(len(data) - 128))  # a valid .npy of zeros


def _wrong_rows(path: Path) -> None:
    """Replace the entry with a self-consistent one (valid checksums) of 5 rows too few."""
    from harness.store import Store

    d = path.parent
    key = d.name
    s = Store(d.parents[2], warn=lambda m: None)
    x = np.load(d / "x.npy")[:-5]
    s.write("features", key, {"x": x, "valid": np.ones(len(x), bool)}, {"bad_items": []})


DAMAGE = {
    "x truncated": lambda d: (d / "x.npy").write_bytes((d / "x.npy").read_bytes()[:200]),
    "x cut by 30 bytes": lambda d: (d / "x.npy").write_bytes((d / "x.npy").read_bytes()[:-30]),
    "x 1 flipped byte": lambda d: _flip(d / "x.npy", 1, 0),
    "x 16 flipped bytes": lambda d: _flip(d / "x.npy", 16, 1),
    "x header flipped": lambda d: _flip(d / "x.npy", 3, 2, skip_header=False),
    "x zeroed": lambda d: _zero_payload(d / "x.npy"),
    "valid missing": lambda d: (d / "valid.npy").unlink(),
    "valid flipped": lambda d: _flip(d / "valid.npy", 1, 3, skip_header=False),
    "manifest flipped": lambda d: _flip(d / "manifest.json", 4, 4, skip_header=False),
    "manifest truncated": lambda d: (d / "manifest.json").write_bytes(
        (d / "manifest.json").read_bytes()[:-30]),
    "manifest empty": lambda d: (d / "manifest.json").write_bytes(b""),
    "wrong row count": lambda d: _wrong_rows(d / "x.npy"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_feature_entry_is_recomputed_with_one_warning(images, clean_run, tmp_path, damage):
    import shutil

    from harness.features import FeatureCache

    _, paths = images
    cache = tmp_path / "cache"
    clean_wide, clean_dir = clean_run
    src = _entry(clean_dir)
    dst = cache / "features" / src.parent.name / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock*"))
    DAMAGE[damage](dst)
    c = FeatureCache(cache, chunk_rows=CHUNK)
    f = c.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
    assert c.extractions == 1 and not f.from_cache
    assert len(c.warnings) == 1 and str(dst / "manifest.json") in c.warnings[0], c.warnings
    np.testing.assert_array_equal(np.asarray(f.x), clean_wide.x)
    c2 = FeatureCache(cache, chunk_rows=CHUNK)  # repaired: the next run reads it, silently
    f2 = c2.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
    assert f2.from_cache and c2.warnings == [] and np.array_equal(np.asarray(f2.x), clean_wide.x)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "record flipped", "record missing"])
def test_torn_or_damaged_chunk_is_never_read(images, clean_wide, tmp_path, damage):
    from harness.features import FeatureCache

    _, paths = images
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated crash"):  # 3 chunks of 2 batches committed
        FeatureCache(cache, chunk_rows=CHUNK).features(WideModel(crash_at=7), make_split(paths),
                                                       batch_size=BATCH, num_workers=0)
    assert len(_chunks(cache)) == 3
    records = sorted(_chunks(cache))
    rec = records[1]
    npy = rec.with_suffix(".npy")
    if damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:-30])
    elif damage == "flipped":
        _flip(npy, 5, 7)
    elif damage == "record flipped":
        _flip(rec, 2, 8, skip_header=False)
    else:
        rec.unlink()
    c = FeatureCache(cache, chunk_rows=CHUNK)
    f = c.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
    np.testing.assert_array_equal(np.asarray(f.x), clean_wide.x)
    if damage == "record missing":  # an uncommitted chunk: recomputed, nothing to report
        assert c.warnings == []
    else:
        assert len(c.warnings) == 1 and str(rec) in c.warnings[0], c.warnings


@pytest.mark.parametrize("damage", ["w cut by 30 bytes", "w flipped", "w zeroed", "w missing",
                                    "manifest flipped"])
def test_damaged_text_classifier_is_rebuilt(tmp_path, damage):
    from harness.features import FeatureCache

    model = WideModel()
    w = np.random.default_rng(0).standard_normal((24, 5)).astype(np.float32)  # [dim, classes]
    calls = []

    def build():
        calls.append(1)
        return w

    names = [f"c{i}" for i in range(5)]
    FeatureCache(tmp_path).text_classifier(model, names, ["a {}"], build)
    d = _entry(tmp_path, "text")
    {"w cut by 30 bytes": lambda: (d / "w.npy").write_bytes((d / "w.npy").read_bytes()[:-30]),
     "w flipped": lambda: _flip(d / "w.npy", 3, 0),
     "w zeroed": lambda: _zero_payload(d / "w.npy"),
     "w missing": lambda: (d / "w.npy").unlink(),
     "manifest flipped": lambda: _flip(d / "manifest.json", 3, 1, skip_header=False)}[damage]()
    c = FeatureCache(tmp_path)
    got = c.text_classifier(model, names, ["a {}"], build)
    assert len(calls) == 2 and np.array_equal(got, w)
    assert len(c.warnings) == 1 and str(d / "manifest.json") in c.warnings[0]


# ------------------------------------------------------------------ full / read-only disk

def _mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the read-only/ENOSPC paths are also "
                    "covered by the simulated-error tests)")
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       check=False, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


def test_full_filesystem_keeps_features_in_memory_and_leaves_no_entry(images, tmp_path):
    from harness.features import FeatureCache

    _, paths = images
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "64k")
    try:
        model = WideModel(dim=512)  # 96 x 512 x 4 = 196 KB of features: more than the disk
        clean = _clean(paths, model, tmp_path / "clean")
        c = FeatureCache(mnt, chunk_rows=CHUNK)
        f = c.features(model, make_split(paths), batch_size=BATCH, num_workers=0)
        np.testing.assert_array_equal(np.asarray(f.x), clean.x)
        assert c.warnings == [f"features not cached: {mnt}: No space left on device"]
        assert not list(mnt.rglob("manifest.json")) and not list(mnt.rglob("*.tmp"))
        c2 = FeatureCache(mnt, chunk_rows=CHUNK)  # the next run: resumes what fitted, same bits
        f2 = c2.features(model, make_split(paths), batch_size=BATCH, num_workers=0)
        np.testing.assert_array_equal(np.asarray(f2.x), clean.x)
        assert c2.warnings == [f"features not cached: {mnt}: No space left on device"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_read_only_filesystem_is_one_line_naming_the_folder(images, clean_wide, tmp_path):
    from harness.features import FeatureCache

    _, paths = images
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "1m")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        c = FeatureCache(mnt, chunk_rows=CHUNK)
        f = c.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
        names = [f"c{i}" for i in range(3)]
        w = c.text_classifier(WideModel(), names, ["{}"], lambda: np.eye(4, 3, dtype=np.float32))
        np.testing.assert_array_equal(np.asarray(f.x), clean_wide.x)
        assert w.shape == (4, 3)
        assert c.warnings == [f"features not cached: {mnt}: Read-only file system"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("err", ["ENOSPC", "EACCES", "EROFS"])
def test_simulated_write_errors_proceed_in_memory(images, clean_wide, tmp_path, monkeypatch, err):
    """Any user (no root needed): a rename that fails mid-split."""
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
    c = FeatureCache(tmp_path / "cache", chunk_rows=CHUNK)
    f = c.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
    monkeypatch.setattr(_io.os, "replace", real)
    np.testing.assert_array_equal(np.asarray(f.x), clean_wide.x)
    assert c.warnings == [f"features not cached: {tmp_path / 'cache'}: {os.strerror(getattr(errno, err))}"]
    assert not list((tmp_path / "cache").rglob("manifest.json"))
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    c2 = FeatureCache(tmp_path / "cache", chunk_rows=CHUNK)
    f2 = c2.features(WideModel(), make_split(paths), batch_size=BATCH, num_workers=0)
    np.testing.assert_array_equal(np.asarray(f2.x), clean_wide.x)
    assert c2.warnings == []


if __name__ == "__main__":
    worker(sys.argv[1:])
