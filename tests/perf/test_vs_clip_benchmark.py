"""DESIGN.md performance goal: zero-shot + linear probe of one model on one dataset at least 2x
faster than CLIP_benchmark 1.6 cold and 5x faster warm (features cached), at equal or better
probe accuracy.  Whole-process wall time, same machine, run one after the other.

Runs only with ``pytest tests/perf --perf``.  Needs CLIP_benchmark 1.6 in its own environment:
``$CLIP_BENCHMARK`` naming its ``clip_benchmark`` executable, else ``/tmp/cbvenv/bin/clip_benchmark``
(``python3 -m venv /tmp/cbvenv && /tmp/cbvenv/bin/pip install "clip_benchmark==1.6.*"
open_clip_torch==3.3.0``); skipped with the reason when neither exists.

Setup (all offline, CPU):

* data: a seeded MNIST look-alike in torchvision's layout (``MNIST/raw/*-ubyte``, uncompressed,
  so torchvision's ``MNIST`` finds it and downloads nothing), 10,000 train / 2,000 test 28x28
  images made from scikit-learn's digits (train images from a stratified 2/3 of the digits, test
  images from the other 1/3; each 8x8 digit upsampled to 20x20, placed at a random shift of up
  to 2 px, plus Gaussian noise).  Both tools read the same files.
* model: the demo's tiny CLIP (``tradeoff_bench_fixtures.demo``), a ``local-dir:`` open_clip folder.
* CLIP_benchmark: ``--task zeroshot_classification`` then ``--task linear_probe`` (two
  processes: it runs one task per invocation), ``--val_proportion 0.2`` so that it searches the
  weight decay on a validation carve-out like the harness's default ``clip`` probe searches C,
  ``--no_amp`` (fp32, as the harness runs on CPU), ``--num_workers 0`` (``$CB_NUM_WORKERS``
  overrides): its fastest setting here.  Its linear probe builds a fresh ``DataLoader`` over
  the cached features for each of its 20 AdamW fits x 10 epochs, so with worker processes it
  re-forks them 200+ times: on 2 cores ``--num_workers 2`` made its probe ~4x slower
  (69 s vs 17 s), and the default 4 would be worse; measuring against that would flatter us.
  CLIP_benchmark 1.6's linear probe asserts ``device == 'cuda'`` and calls ``.cuda()``; on a
  CPU-only machine it is run through a launcher that removes that assertion and makes
  ``.cuda()`` a no-op — nothing else changes.  Its environment needs ``requests`` (an
  undeclared import) and ``numpy<2.4`` (its ``accuracy`` does ``float()`` of a 1-element
  array, an error in numpy 2.4).  Warm = the same commands again with ``--feature_root``
  filled: the linear probe reads its cached features (``--skip_load`` would also skip the model
  load, but 1.6.2 then crashes at the end, ``dataset`` unbound); zero-shot has no feature cache
  in CLIP_benchmark, so it extracts again.
* harness: ``pytest benchmarks --suite FILE`` with the same model and data and
  ``protocols = ["zeroshot", "linear_probe"]`` (default ``clip`` probe); warm = same
  ``--feature-cache`` again.

Measured 2026-11-27 on the 2-core AMD EPYC development VM (torch 2.14.1, open_clip 3.3.0,
clip_benchmark 1.6.2), after the harness started building networks only when something is not
cached: harness 13.0 s cold / 7.2 s warm, CLIP_benchmark 24.2 s / 21.8 s (``--num_workers 0``),
ratios 1.87 / 3.02 -> the goal FAILS; with ``--num_workers 2`` CLIP_benchmark took 75 s / 79 s
(5.5 / 8.1).  Zero-shot acc1 identical (0.1995); probe acc1 0.698 vs 0.5645.  The harness's
warm run is mostly fixed cost (imports + pytest ~3 s, the C search 3.6 s).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.perf

REPO = Path(__file__).resolve().parents[2]
N_TRAIN = int(os.environ.get("VS_CB_N_TRAIN", "10000"))  # 60000 + 10000: the issue-12 70,000-image run
N_TEST = int(os.environ.get("VS_CB_N_TEST", "2000"))
SEED = 1234
COLD_RATIO, WARM_RATIO = 2.0, 5.0


def clip_benchmark_exe() -> Path | None:
    for p in (os.environ.get("CLIP_BENCHMARK"), "/tmp/cbvenv/bin/clip_benchmark"):
        if p and Path(p).is_file():
            return Path(p)
    return None


# ------------------------------------------------------------------------------------ data

def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
    dims = struct.pack(">" + "I" * arr.ndim, *arr.shape)
    path.write_bytes(magic + dims + arr.tobytes())


def make_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = SEED) -> Path:
    """Write ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; return ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = root / "MNIST" / "raw"
    if (raw / "t10k-labels-idx1-ubyte").is_file():
        return root
    raw.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    big = np.stack([np.asarray(Image.fromarray(np.round(im * 255 / 16).astype(np.uint8), "L")
                               .resize((20, 20), Image.BICUBIC)) for im in d.images])
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=1 / 3, stratify=d.target, random_state=seed)
    rng = np.random.default_rng(seed)
    for prefix, pool, n in (("train", tr, n_train), ("t10k", te, n_test)):
        pick = rng.choice(pool, size=n, replace=True)
        imgs = np.zeros((n, 28, 28), np.float32)
        shifts = rng.integers(-2, 3, size=(n, 2))
        for k, (i, (dy, dx)) in enumerate(zip(pick, shifts)):
            imgs[k, 4 + dy:24 + dy, 4 + dx:24 + dx] = big[i]
        imgs += rng.normal(0, 12, size=imgs.shape)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", np.clip(np.round(imgs), 0, 255))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", d.target[pick])
    return root


def make_model(root: Path) -> Path:
    from tradeoff_bench_fixtures.demo import ensure_demo

    return ensure_demo(root) / "models" / "base"


# ------------------------------------------------------------------------- CLIP_benchmark

# CLIP_benchmark 1.6's linear probe is CUDA-only (assert device == 'cuda', .cuda() calls).  This
# launcher, run by the CLIP_benchmark environment's python, removes the assertion and makes
# .cuda() a no-op, then runs its CLI unchanged.
CPU_LAUNCHER = textwrap.dedent('''
    import inspect, sys, torch
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    import clip_benchmark.metrics.linear_probe as lp
    src = inspect.getsource(lp).replace("assert device == 'cuda'", "pass")
    exec(compile(src, lp.__file__, "exec"), lp.__dict__)
    from clip_benchmark.cli import main
    sys.argv[0] = "clip_benchmark"
    sys.exit(main())
''')


def run_clip_benchmark(exe: Path, model_dir: Path, data: Path, features: Path, out: Path) -> dict:
    """Zero-shot then linear probe; returns wall seconds of each process and their metrics."""
    out.mkdir(parents=True, exist_ok=True)
    launcher = out / "cb_cpu.py"
    launcher.write_text(CPU_LAUNCHER)
    python = exe.parent / "python"
    common = ["eval", "--dataset", "mnist", "--dataset_root", str(data),
              "--model_type", "open_clip", "--model", f"local-dir:{model_dir}", "--pretrained", "none",
              "--no_amp", "--num_workers", os.environ.get("CB_NUM_WORKERS", "0"), "--batch_size", "64", "--seed", "0",
              "--feature_root", str(features)]
    res = {}
    for task, extra in (("zeroshot_classification", []),
                        ("linear_probe", ["--val_proportion", "0.2"])):
        cmd = [str(python), str(launcher), *common, "--task", task,
               "--output", str(out / f"{task}.json"), *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out)
        res[f"{task}_seconds"] = time.perf_counter() - t0
        assert p.returncode == 0, f"{task}: {p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        res[task] = json.loads((out / f"{task}.json").read_text())["metrics"]
    res["seconds"] = res["zeroshot_classification_seconds"] + res["linear_probe_seconds"]
    return res


# ----------------------------------------------------------------------------------- harness

SUITE = """\
[suite]
name = "vs-clip-benchmark"

[models.tiny-clip]
arch = "local-dir:{model}"

[datasets.mnist]
type = "classification"
format = "mnist"
root = "{data}"
protocols = ["zeroshot", "linear_probe"]
"""


def run_harness(suite: Path, cache: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--suite", str(suite),
                        "--feature-cache", str(cache), "--results-dir", str(out),
                        "-p", "no:cacheprovider", "-q"], cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"seconds": dt, **harness_metrics(out / "results.json")}


def harness_metrics(path: Path) -> dict:
    """acc1 of the zeroshot and linear_probe cases in a results.json."""
    data = json.loads(path.read_text())
    found = {}

    def walk(o):
        if isinstance(o, dict):
            proto = o.get("protocol")
            metrics = o.get("metrics") if isinstance(o.get("metrics"), dict) else o
            if proto in ("zeroshot", "linear_probe") and "acc1" in metrics:
                found[proto] = float(metrics["acc1"])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(data)
    return found


# --------------------------------------------------------------------------------------- test

def test_vs_clip_benchmark(benchmark, tmp_path):
    exe = clip_benchmark_exe()
    if exe is None:
        pytest.skip("CLIP_benchmark not found: set CLIP_BENCHMARK to its clip_benchmark executable "
                    "or install it in /tmp/cbvenv (see this module's docstring)")
    model = make_model(Path(os.environ.get("VS_CB_DEMO", tmp_path / "demo")))
    data = make_mnist(tmp_path / "data")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(model=model, data=data))

    cache = tmp_path / "harness-cache"
    h_cold = benchmark.pedantic(run_harness, args=(suite, cache, tmp_path / "h-cold"),
                                rounds=1, iterations=1)
    h_warm = run_harness(suite, cache, tmp_path / "h-warm")
    feats = tmp_path / "cb-features"
    cb_cold = run_clip_benchmark(exe, model, data, feats, tmp_path / "cb-cold")
    cb_warm = run_clip_benchmark(exe, model, data, feats, tmp_path / "cb-warm")

    info = {
        "n_train": N_TRAIN, "n_test": N_TEST, "cb_num_workers": os.environ.get("CB_NUM_WORKERS", "0"),
        "harness_cold_s": round(h_cold["seconds"], 2), "harness_warm_s": round(h_warm["seconds"], 2),
        "cb_cold_s": round(cb_cold["seconds"], 2), "cb_warm_s": round(cb_warm["seconds"], 2),
        "cb_cold_split_s": {k: round(v, 2) for k, v in cb_cold.items() if k.endswith("_seconds")},
        "cb_warm_split_s": {k: round(v, 2) for k, v in cb_warm.items() if k.endswith("_seconds")},
        "cold_ratio": round(cb_cold["seconds"] / h_cold["seconds"], 2),
        "warm_ratio": round(cb_warm["seconds"] / h_warm["seconds"], 2),
        "harness_zeroshot_acc1": h_cold.get("zeroshot"), "harness_probe_acc1": h_cold.get("linear_probe"),
        "harness_warm_probe_acc1": h_warm.get("linear_probe"),
        "cb_zeroshot_acc1": cb_cold["zeroshot_classification"]["acc1"],
        "cb_probe_acc1": cb_cold["linear_probe"]["lp_acc1"] if "lp_acc1" in cb_cold["linear_probe"]
        else cb_cold["linear_probe"]["acc1"],
        "cb_warm_probe_acc1": cb_warm["linear_probe"].get("lp_acc1", cb_warm["linear_probe"].get("acc1")),
    }
    benchmark.extra_info.update(info)
    print(json.dumps(info, indent=1))
    assert "zeroshot" in h_cold and "linear_probe" in h_cold, h_cold
    assert abs(info["harness_zeroshot_acc1"] - info["cb_zeroshot_acc1"]) < 0.02, info
    assert info["harness_probe_acc1"] >= info["cb_probe_acc1"] - 1e-9, info
    assert info["cold_ratio"] >= COLD_RATIO, info
    assert info["warm_ratio"] >= WARM_RATIO, info
