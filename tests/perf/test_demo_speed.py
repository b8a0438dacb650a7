"""DESIGN.md contract: `pytest benchmarks` (the demo) under 3 minutes cold and 30 s warm on
2 cores.  Cold = empty feature cache (the demo's models and data are built too); warm = the
same cache again.  Run with ``pytest tests/perf --perf``."""

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _demo(cache: Path, out: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
                          "--feature-cache", str(cache), "--results-dir", str(out)],
                         cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return dt


def test_demo_cold_and_warm(benchmark, tmp_path):
    cold = benchmark.pedantic(_demo, args=(tmp_path / "cache", tmp_path / "cold"), rounds=1, iterations=1)
    warm = _demo(tmp_path / "cache", tmp_path / "warm")
    benchmark.extra_info.update({"cold_seconds": round(cold, 1), "warm_seconds": round(warm, 1)})
    print(benchmark.extra_info)
    assert cold < 180 and warm < 30
