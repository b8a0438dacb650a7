#!/usr/bin/env bash
# The device check, run from the repository root on a CUDA machine (see README "GPU check"):
# extraction throughput and autocast correctness (gpu_check.py), then the demo on the GPU in
# fp32 and with --autocast. Writes into ${OUT:-gpu-out}.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || echo "editable install failed (see install.log)"
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1 HARNESS_CACHE=/tmp/hcache
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 tests/perf/gpu_check.py "$OUT" 2>&1 | tail -40
for mode in fp32 autocast; do
  extra=""; [ "$mode" = autocast ] && extra="--autocast"
  t0=$SECONDS
  python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-disable \
      --device cuda $extra --results-dir "$OUT/demo-$mode" 2>&1 | tail -3
  echo "demo $mode wall $((SECONDS - t0)) s"
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a = {(c["protocol"], c["model"], c["dataset"]): c["metrics"] for c in json.load(open(f"{out}/demo-fp32/results.json"))["cases"]}
b = {(c["protocol"], c["model"], c["dataset"]): c["metrics"] for c in json.load(open(f"{out}/demo-autocast/results.json"))["cases"]}
worst = max(((abs(a[k][m] - b[k].get(m, float("nan"))), k, m) for k in a if k in b for m in a[k] if m in b[k]), default=None)
print("largest fp32 vs autocast metric difference:", worst)
PY
