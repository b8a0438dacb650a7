"""The prepared GPU check (tests/perf/gpu_check.py) must run when a device is lent: here the same
code runs on the CPU with the tiny CLIP, where autocast does not apply (every dtype is fp32)."""

import importlib.util
import json
from pathlib import Path

import pytest


def test_gpu_check_script_runs_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_IMAGES", str(tmp_path / "imgs"))
    path = Path(__file__).parent / "perf" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main([str(tmp_path / "out"), "--device", "cpu", "--archs", "tiny", "--n", "48", "--batch", "16",
              "--dtypes", "fp32,bf16"])
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    r = res["tiny"]
    assert res["images"] == 48 and len(list((tmp_path / "imgs").glob("*.jpg"))) == 48
    for dtype in ("fp32", "bf16"):
        assert r[f"forward_ips_{dtype}"] > 0 and r[f"extract_ips_{dtype}"] > 0
        assert r[f"ratio_to_bound_{dtype}"] == pytest.approx(
            r[f"extract_ips_{dtype}"] / min(r[f"forward_ips_{dtype}"], r["decode_ips"]))
    # CPU: autocast does not apply, so the "bf16" model is the fp32 model
    assert r["compute_dtype_bf16"] == "fp32"
    assert r["autocast_bf16_feature_cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert r["autocast_bf16_zeroshot_top1_agreement"] == 1.0
    assert r["four_models_shared_s_bf16"] > 0
