"""IJB scoring at IJB-C scale: 10 M template pairs, 512-d, TAR at six FARs (run with --perf).

Budget: under 60 s and under 2 GB of resident memory beyond the inputs (template features,
the pair list and its labels).  The peak is read from ``/proc/self/status`` (``VmHWM``) after
resetting it through ``/proc/self/clear_refs``; where that reset is not allowed the test
measures in a fresh subprocess instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

N_TEMPLATES = 23_000          # IJB-C has about 23 k templates
DIM = 512
N_PAIRS = 10_000_000
N_GENUINE = 15_000
MAX_SECONDS = 60.0
MAX_PEAK_MB = 2048.0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_inputs(seed: int = 0):
    """Template features (unit rows, 4 templates per identity), 10 M pairs and labels."""
    rng = np.random.default_rng(seed)
    ident = np.arange(N_TEMPLATES) // 4
    centres = rng.standard_normal((ident[-1] + 1, DIM), dtype=np.float32)
    feats = centres[ident]
    feats += 2.5 * rng.standard_normal((N_TEMPLATES, DIM), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    templates = np.arange(N_TEMPLATES, dtype=np.int64) * 7 + 1     # ids are not row numbers
    pairs = rng.integers(0, N_TEMPLATES, (N_PAIRS, 2))
    # plant genuine pairs: a template and another of its identity
    first = rng.integers(0, N_TEMPLATES, N_GENUINE)
    pairs[:N_GENUINE, 0] = first
    pairs[:N_GENUINE, 1] = (first // 4) * 4 + (first % 4 + rng.integers(1, 4, N_GENUINE)) % 4
    labels = (ident[pairs[:, 0]] == ident[pairs[:, 1]]).astype(np.int8)
    pairs = templates[pairs]
    return templates, feats, pairs, labels


def score_and_reduce(templates, feats, pairs, labels):
    from harness.protocols.ijb import FARS, pair_scores, tar_at_fars

    scores = pair_scores(templates, feats, pairs)
    return tar_at_fars(scores, labels, FARS, "at-most")


def _measure_in_subprocess() -> dict:
    code = ("import json, sys, time, gc\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_ijb_speed import make_inputs, score_and_reduce, _status_kb\n"
            "inp = make_inputs(); gc.collect()\n"
            "base = _status_kb('VmRSS')\n"
            "t = time.perf_counter(); m, d = score_and_reduce(*inp)\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, 'peak_kb': _status_kb('VmHWM'),"
            " 'base_kb': base, 'metrics': m}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.perf
def test_ijb_scoring_10m_pairs(benchmark):
    inputs = make_inputs()
    n_genuine = int(inputs[3].sum())
    base_kb = _status_kb("VmRSS")
    if _reset_peak():
        t0 = time.perf_counter()
        metrics, details = benchmark.pedantic(score_and_reduce, args=inputs, rounds=1,
                                              iterations=1, warmup_rounds=0)
        seconds = time.perf_counter() - t0
        peak_mb = (_status_kb("VmHWM") - base_kb) / 1024.0
        how = "in-process (clear_refs + VmHWM)"
    else:                                   # pragma: no cover - kernels without clear_refs
        r = benchmark.pedantic(_measure_in_subprocess, rounds=1, iterations=1)
        seconds, metrics = r["seconds"], r["metrics"]
        peak_mb = (r["peak_kb"] - r["base_kb"]) / 1024.0
        how = "subprocess (VmHWM - VmRSS after inputs, an upper bound)"
    benchmark.extra_info.update({
        "pairs": N_PAIRS, "templates": N_TEMPLATES, "dim": DIM, "genuine_pairs": n_genuine,
        "seconds": round(seconds, 2), "peak_rss_increase_mb": round(peak_mb, 1),
        "memory_measured": how, "metrics": metrics})
    print(f"\nIJB scoring: {N_PAIRS:,} pairs x {DIM}-d, {N_TEMPLATES:,} templates: "
          f"{seconds:.1f} s, peak RSS +{peak_mb:.0f} MB ({how}); {metrics}")
    assert set(metrics) == {f"tar@far=1e-{k}" for k in range(1, 7)}
    values = [metrics[f"tar@far=1e-{k}"] for k in range(6, 0, -1)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert metrics["tar@far=1e-1"] > 0.5 > metrics["tar@far=1e-6"]   # a realistic spread
    assert seconds < MAX_SECONDS, f"{seconds:.1f} s for {N_PAIRS:,} pairs (budget {MAX_SECONDS} s)"
    assert peak_mb < MAX_PEAK_MB, f"peak RSS +{peak_mb:.0f} MB (budget {MAX_PEAK_MB:.0f} MB)"
