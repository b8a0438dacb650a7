"""Feature extraction and the content-addressed cache."""

import os
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data.base import Split
from harness.errors import DataError
from harness.features import FeatureCache, check_unreadable, extract, feature_key
from harness.models.preprocess import Preprocess


class PixelModel:
    """Features = the mean of each channel over four image quadrants (12-d), computed by hand."""

    def __init__(self, fingerprint="m1", size=8):
        self.id = "pixel"
        self.device = "cpu"
        self.fingerprint = fingerprint
        self.preprocess = Preprocess(size=size, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                                     std=(1.0, 1.0, 1.0), resize="squash")
        self.calls = 0

    def encode_image(self, x):
        self.calls += 1
        h = x.shape[-1] // 2
        q = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
        return torch.cat([t.mean(dim=(-1, -2)) for t in q], dim=1)


def make_split(tmp_path, n=6, name="test"):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return Split(name, paths, np.arange(n) % 2)


def test_extract_matches_hand_computation_and_flip(tmp_path):
    split = make_split(tmp_path)
    model = PixelModel()
    f = extract(model, split, batch_size=4, num_workers=0)
    img = np.asarray(Image.open(split.items[0]), dtype=np.float32) / 255.0
    expected = np.concatenate([img[:4, :4].mean((0, 1)), img[:4, 4:].mean((0, 1)),
                               img[4:, :4].mean((0, 1)), img[4:, 4:].mean((0, 1))])
    np.testing.assert_allclose(f.x[0], expected, atol=1e-6)
    assert f.valid.all() and f.x.shape == (6, 12)
    ff = extract(model, split, flip=True, batch_size=4, num_workers=0)
    flipped = img[:, ::-1]
    exp_flip = np.concatenate([flipped[:4, :4].mean((0, 1)), flipped[:4, 4:].mean((0, 1)),
                               flipped[4:, :4].mean((0, 1)), flipped[4:, 4:].mean((0, 1))])
    np.testing.assert_allclose(ff.x[0], expected + exp_flip, atol=1e-6)


def test_worker_processes_give_the_same_features(tmp_path):
    split = make_split(tmp_path, n=10)
    a = extract(PixelModel(), split, batch_size=3, num_workers=0)
    b = extract(PixelModel(), split, batch_size=3, num_workers=2)
    np.testing.assert_array_equal(a.x, b.x)


def test_key_changes_with_every_input_and_not_otherwise(tmp_path):
    split = make_split(tmp_path)
    m = PixelModel()
    base = feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), "test", False)
    assert base == feature_key(m.fingerprint, m.preprocess.fingerprint,  # same files, new object
                               Split("test", list(split.items), split.labels).fingerprint(), "test", False)
    changed = {
        "weights": feature_key("m2", m.preprocess.fingerprint, split.fingerprint(), "test", False),
        "preprocess": feature_key(m.fingerprint, replace(m.preprocess, channel_order="bgr").fingerprint,
                                  split.fingerprint(), "test", False),
        "split": feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), "train", False),
        "flip": feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), "test", True),
    }
    # a file's modification time, size or the file list
    os.utime(split.items[0], ns=(1, 1))
    changed["mtime"] = feature_key(m.fingerprint, m.preprocess.fingerprint,
                                   Split("test", split.items, split.labels).fingerprint(), "test", False)
    changed["files"] = feature_key(m.fingerprint, m.preprocess.fingerprint,
                                   Split("test", split.items[:-1], split.labels[:-1]).fingerprint(), "test", False)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(split.items[1])
    changed["size"] = feature_key(m.fingerprint, m.preprocess.fingerprint,
                                  Split("test", split.items, split.labels).fingerprint(), "test", False)
    for k, v in changed.items():
        assert v != base, k
    assert len(set(changed.values())) == len(changed)


def test_second_run_reads_instead_of_extracting(tmp_path):
    split = make_split(tmp_path)
    m = PixelModel()
    c1 = FeatureCache(tmp_path / "cache")
    f1 = c1.features(m, split, num_workers=0)
    assert c1.extractions == 1 and not f1.from_cache and m.calls > 0
    calls = m.calls
    c2 = FeatureCache(tmp_path / "cache")  # a new process, the same folder
    f2 = c2.features(m, split, num_workers=0)
    assert c2.extractions == 0 and f2.from_cache and m.calls == calls
    np.testing.assert_array_equal(f1.x, f2.x)
    c3 = FeatureCache(tmp_path / "cache", refresh=True)
    c3.features(m, split, num_workers=0)
    c3.features(m, split, num_workers=0)  # refreshed once per run, not per call
    assert c3.extractions == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_concurrent_extraction_of_one_entry_happens_once(tmp_path):
    split = make_split(tmp_path)
    caches = [FeatureCache(tmp_path / "cache") for _ in range(4)]
    threads = [threading.Thread(target=c.features, args=(PixelModel(), split), kwargs={"num_workers": 0})
               for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c.extractions for c in caches) == 1


def test_unreadable_images_are_counted_and_over_one_percent_fail(tmp_path):
    split = make_split(tmp_path, n=4)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    f = extract(PixelModel(), split, num_workers=0)
    assert f.skipped == 1 and f.bad_items == [str(tmp_path / "img2.png")]
    assert not f.x[2].any()
    kept = f.dropping_unreadable()
    assert len(kept) == 3 and list(kept.labels) == [0, 1, 1]
    with pytest.raises(DataError, match=r"1 of 4 images unreadable .*img2.png"):
        check_unreadable(f, "demo/test")
    with pytest.raises(DataError, match="pair protocols cannot skip images"):
        f.require_all_readable("faces/test")


def test_cpu_loader_plan():
    from harness.features import plan_cpu_loader

    # decoder-bound (tiny model): every core decodes, the model gets one thread
    assert plan_cpu_loader(decode_seconds=8e-4, forward_seconds=1e-5, cpus=2) == (2, 1)
    # model-bound (ViT at 224 px): decoding in turn with the model beats stealing its cores
    assert plan_cpu_loader(decode_seconds=0.01, forward_seconds=0.1, cpus=2) == (0, 2)
    # many cores, balanced costs, worked by hand: in turn 1 / 0.005 = 200 img/s; w workers
    # decode 250 w img/s and 16 - w model threads run 62.5 (16 - w) img/s: w = 1: 250, w = 2:
    # 500, w = 3: 750 (= min(750, 812.5)), w = 4: 750 (= min(1000, 750)) is no 5 % gain, w >= 5
    # less: three workers, thirteen model threads
    assert plan_cpu_loader(decode_seconds=0.004, forward_seconds=0.001, cpus=16) == (3, 13)
    # one core: in turn 500 img/s; one worker + one thread 1000 img/s
    assert plan_cpu_loader(decode_seconds=0.001, forward_seconds=0.001, cpus=1) == (1, 1)


# ------------------------------------------------------------------ store: keys, memory, files

def test_runtime_inputs_are_in_the_key_and_each_change_misses(tmp_path, monkeypatch):
    """dtype/autocast, device type, torch and open_clip versions: each change is a cache miss."""
    import harness.features as hf

    split = make_split(tmp_path)
    cache = FeatureCache(tmp_path / "cache")
    m = PixelModel()
    base = cache.features(m, split, num_workers=0)
    assert cache.extractions == 1
    cache.features(PixelModel(), split, num_workers=0)
    assert cache.extractions == 1  # same inputs: a hit

    bf16 = PixelModel()
    bf16.compute_dtype = "torch.bfloat16"  # what a model running under autocast reports
    f = cache.features(bf16, split, num_workers=0)
    assert cache.extractions == 2 and f.key != base.key
    np.testing.assert_array_equal(f.x, base.x)  # (the pixel model ignores the dtype)

    real_version = hf._version
    for package in ("torch", "open_clip_torch"):
        monkeypatch.setattr(hf, "_version", lambda p, pk=package: real_version(p) + ("+other" if p == pk
                                                                                 else ""))
        n = cache.extractions
        g = cache.features(PixelModel(), split, num_workers=0)
        assert cache.extractions == n + 1 and g.key not in (base.key, f.key), package
        monkeypatch.undo()

    # device type and autocast, at the key level (no GPU here): cuda fp32 vs cuda autocast vs cpu
    class Dev:
        def __init__(self, device, autocast):
            self.device, self.autocast = device, autocast
    keys = {hf.runtime_fingerprint(Dev(d, a)) for d, a in
            [("cpu", False), ("cpu", True), ("cuda:0", False), ("cuda:1", False), ("cuda:0", True)]}
    # autocast on CPU is fp32 (the harness never autocasts there); cuda:0 and cuda:1 are alike
    assert len(keys) == 3
    assert hf.runtime_fingerprint(Dev("cuda:0", True)).count("bfloat16") == 1


def test_memory_cache_is_bounded_in_bytes(tmp_path):
    for i in range(3):
        (tmp_path / f"s{i}").mkdir(exist_ok=True)
    splits = [make_split(tmp_path / f"s{i}", n=6) for i in range(3)]
    one = 6 * 12 * 4 + 6  # x (float32) + valid (bool)
    cache = FeatureCache(tmp_path / "cache", memory_bytes=2 * one)
    for s in splits:
        cache.features(PixelModel(), s, num_workers=0)
    assert cache._memory_used == 2 * one and len(cache._memory) == 2
    huge = FeatureCache(tmp_path / "cache", memory_bytes=one - 1)  # nothing fits: nothing kept
    huge.features(PixelModel(), splits[0], num_workers=0)
    assert huge._memory_used == 0 and not huge._memory


def test_files_follow_the_umask_so_a_group_can_share(tmp_path):
    old = os.umask(0o002)
    try:
        cache = FeatureCache(tmp_path / "cache")
        cache.features(PixelModel(), make_split(tmp_path), num_workers=0)
        cache.text_classifier(PixelModel(), ["a", "b"], ["{}"], lambda: np.eye(2, dtype=np.float32))
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) >= 6
    for p in files:
        assert p.stat().st_mode & 0o777 == 0o664, (p, oct(p.stat().st_mode))


def test_stale_temporaries_are_swept_when_the_cache_opens(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    from harness._io import _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = tmp_path / "cache" / "features" / "ab" / "abcd"
    d.mkdir(parents=True)
    orphan = d / f".x.npy.{_host()}.{dead.pid}.k2j3.tmp"   # its writer was killed
    live = d / f".x.npy.{_host()}.{os.getpid()}.q9w8.tmp"  # being written right now
    foreign_new = d / ".x.npy.otherhost.12.abcd.tmp"       # another node, recent
    foreign_old = d / ".x.npy.otherhost.13.efgh.tmp"       # another node, a day old
    for p in (orphan, live, foreign_new, foreign_old):
        p.write_bytes(b"\0" * 2048)
    os.utime(foreign_old, (time.time() - 86400, time.time() - 86400))
    assert socket.gethostname()
    cache = FeatureCache(tmp_path / "cache")
    assert sorted(cache.store.swept) == sorted([orphan, foreign_old])
    assert live.exists() and foreign_new.exists()


def test_checkpoint_hash_is_memoised_on_disk_and_invalidated_by_changes(tmp_path):
    import hashlib

    from harness import fileid

    f = tmp_path / "w.bin"
    f.write_bytes(os.urandom(1 << 20))
    fileid.use_folder(tmp_path / "cache" / "fileid")
    fileid.clear_process_memo()
    b0 = fileid.hashed_bytes
    assert fileid.memo_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert fileid.hashed_bytes - b0 == 1 << 20
    fileid.clear_process_memo()  # a new process: the disk memo answers
    assert fileid.memo_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert fileid.hashed_bytes - b0 == 1 << 20
    data = bytearray(f.read_bytes())
    data[5] ^= 1
    st = f.stat()
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten: same size, new mtime
    fileid.clear_process_memo()
    assert fileid.memo_sha256(f) == hashlib.sha256(bytes(data)).hexdigest()
    moved = tmp_path / "elsewhere" / "w.bin"  # another mount point: same content, same hash
    moved.parent.mkdir()
    moved.write_bytes(bytes(data))
    assert fileid.memo_sha256(moved) == fileid.memo_sha256(f)
    fileid.use_folder(None)


def test_weights_fingerprint_of_a_checkpoint_does_not_depend_on_where_it_is_mounted(tmp_path):
    from harness.models import weights_fingerprint
    from harness.suite import ModelSpec

    fps = []
    for mount in ("a", "b/c"):
        p = tmp_path / mount / "ckpt.pt"
        p.parent.mkdir(parents=True)
        p.write_bytes(b"weights" * 1000)
        fps.append(weights_fingerprint(ModelSpec(id="m", arch="ViT-B-16", source="s.toml",
                                                 pretrained="openai", checkpoint=str(p))))
    assert fps[0] == fps[1]
    (tmp_path / "a" / "ckpt.pt").write_bytes(b"other" * 1000)
    assert weights_fingerprint(ModelSpec(id="m", arch="ViT-B-16", source="s.toml", pretrained="openai",
                                         checkpoint=str(tmp_path / "a" / "ckpt.pt"))) != fps[0]


def test_lock_wait_names_the_holder_then_times_out(tmp_path):
    import json
    import socket

    from harness.store import LockTimeout

    split = make_split(tmp_path)
    holder = FeatureCache(tmp_path / "cache")
    m = PixelModel()
    from harness.features import feature_key, runtime_fingerprint

    key = feature_key(m.fingerprint, m.preprocess.fingerprint, split.fingerprint(), split.name, False,
                      runtime_fingerprint(m))
    waiter = FeatureCache(tmp_path / "cache", lock_timeout=0.5)
    lines: list[str] = []
    waiter.store.notify = lines.append
    waiter.store.wait_report_every = 0.1
    with holder.store.lock("features", key):
        owner = json.loads((holder.store.entry_dir("features", key) / ".lock.owner").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(LockTimeout, match=rf"held by pid {os.getpid()} on .*--lock-timeout 0.5"):
            waiter.features(m, split, num_workers=0)
    assert lines and all(f"held by pid {os.getpid()}" in line for line in lines)
    assert waiter.extractions == 0
    waiter.features(m, split, num_workers=0)  # released: no wait, no message
    assert waiter.extractions == 1


def test_chunk_writer_api_for_a_feature_stage(tmp_path):
    """Several writers (one per model) fed chunk by chunk, finished from their chunks."""
    from harness.store import Store

    store = Store(tmp_path, warn=pytest.fail)
    rng = np.random.default_rng(0)
    full = {k: rng.standard_normal((10, d)).astype(np.float32) for k, d in (("k1", 4), ("k2", 6))}
    writers = {k: store.open_writer(k, 10) for k in full}
    for start in (0, 4, 8):
        for k, w in writers.items():
            stop = min(start + 4, 10)
            valid = np.ones(stop - start, bool)
            bad = []
            if k == "k2" and start == 4:
                valid[1], bad = False, ["img5"]
            w.write_chunk(start, full[k][start:stop], valid, bad)
    for k, w in writers.items():
        assert [(c.start, c.stop) for c in w.completed()] == [(0, 4), (4, 8), (8, 10)]
        w.finish({"bad_items": ["img5"] if k == "k2" else []})
        arrays, _ = store.read("features", k)
        np.testing.assert_array_equal(arrays["x"], full[k])
        assert list(np.flatnonzero(~arrays["valid"])) == ([5] if k == "k2" else [])
        assert not (store.entry_dir("features", k) / "chunks").exists()


def test_text_classifier_is_read_back_without_rebuilding(tmp_path):
    """[embedding dim, classes], as the zero-shot protocol builds it: read back, not rebuilt."""
    w = np.arange(64 * 10, dtype=np.float32).reshape(64, 10)
    calls = []
    names = [f"c{i}" for i in range(10)]
    for _ in range(2):
        c = FeatureCache(tmp_path / "cache")  # a new process each time
        got = c.text_classifier(PixelModel(), names, ["a photo of a {}."], lambda: calls.append(1) or w)
        np.testing.assert_array_equal(got, w)
        assert c.warnings == []
    assert len(calls) == 1


def test_portable_weights_references_drop_the_mount_point(tmp_path):
    from harness.fileid import portable

    assert portable("local-dir:/mnt/a/models/m1") == portable("local-dir:/data/m1") == "local-dir:"
    assert portable("/mnt/a/ckpt/model.pt") == portable("/b/model.pt") == "file:model.pt"
    assert portable("openai") == "openai" and portable("ViT-B-16") == "ViT-B-16"
    assert portable(None) is None


def test_local_dir_and_file_weights_fingerprints_do_not_depend_on_the_mount(tmp_path):
    from harness.models import weights_fingerprint
    from harness.suite import ModelSpec

    fps = {}
    for mount in ("a", "b/c"):
        d = tmp_path / mount / "model"
        d.mkdir(parents=True)
        (d / "open_clip_config.json").write_text("{}")
        (d / "open_clip_model.safetensors").write_bytes(b"w" * 100)
        fps[mount] = (weights_fingerprint(ModelSpec(id="m", arch=f"local-dir:{d}", source="s.toml")),
                      weights_fingerprint(ModelSpec(id="m", arch="ViT-B-16", source="s.toml",
                                                    pretrained=str(d / "open_clip_model.safetensors"))))
    assert fps["a"] == fps["b/c"]
    (tmp_path / "a" / "model" / "open_clip_model.safetensors").write_bytes(b"v" * 100)
    d = tmp_path / "a" / "model"
    assert weights_fingerprint(ModelSpec(id="m", arch=f"local-dir:{d}", source="s.toml")) != fps["a"][0]


def test_a_stuck_loader_worker_fails_naming_the_files(tmp_path, monkeypatch):
    """A read that never returns (a hung mount, a FIFO opened blocking) fails the extraction
    with the files of the batch, after the loader timeout, instead of hanging."""
    import harness.features as hf

    split = make_split(tmp_path, n=4)

    class Hang(Split):
        def load(self, i):
            if i == 2:
                import time

                time.sleep(60)
            return super().load(i)

    hang = Hang(split.name, split.items, split.labels)
    monkeypatch.setattr(hf, "LOADER_TIMEOUT", 2.0)
    with pytest.raises(DataError, match=r"delivered nothing for 2 s while reading .*img2\.png"):
        extract(PixelModel(), hang, batch_size=1, num_workers=1)


def test_loader_probe_times_the_forward_at_the_batch_size_on_one_thread(monkeypatch):
    """A model whose cost is a fixed 2 ms per call: at the extraction's batch of 128 that is
    15.6 us an image, not the 250 us a batch of 8 suggests; the probe's forward runs on one
    thread and is reported per core (the loader plan's unit)."""
    import time as _time

    import torch

    import harness.features as F

    class Overhead:
        threads: list[int] = []
        sizes: list[int] = []

        def encode_image(self, x):
            self.threads.append(torch.get_num_threads())
            self.sizes.append(len(x))
            _time.sleep(0.002)
            return torch.zeros(len(x), 4)

    class Images:
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return (torch.zeros(3, 4, 4),), i, True

    monkeypatch.setattr(F, "_cpus", lambda: 2)
    model = Overhead()
    decode, forward = F._probe_many([F.Need(model)], Images(), [0], k=8, batch_size=128)
    assert set(model.threads) == {1}
    assert 128 in model.sizes
    per_image_one_core = forward * 2
    assert 0.002 / 128 <= per_image_one_core < 0.002 / 128 * 3  # sleep overshoot, not 16x
    assert decode < 0.01
    # a model that costs more than the budget per batch is not run on a whole batch
    model.sizes.clear()
    F._probe_many([F.Need(model)], Images(), [0], k=8, batch_size=128, budget=0.01)
    assert set(model.sizes) == {8}
