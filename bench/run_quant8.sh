#!/usr/bin/env bash
# The 8-bit runs on a GPU machine, from the repo root (see bench/RESULTS.md "8-bit matmuls on every card"):
#   bash bench/run_quant8.sh OUT_DIR RUNS [RUNS ...]
# The first call on a machine also times one block per kernel (bench/quant8_probe.py) while the full-size
# random CogView4-6B is built. Rows go to /tmp/plans.jsonl (images beside it, for the fidelity against the
# bf16_resident run of the same machine) and are copied to OUT_DIR every 15 s, so a cut-off call keeps them.
set -u
out=$1; shift
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
MODEL=${MODEL:-/tmp/cogview4-random}
CONFIGS=${CONFIGS:-bench/out/cogview4-6b}
(while true; do cp /tmp/plans.jsonl /tmp/plans.log "$out/" 2>/dev/null; sleep 15; done) &
if [ ! -f "$MODEL/vae/config.json" ]; then
  python3 bench/random_model.py "$MODEL" --configs "$CONFIGS" > "$out/build.log" 2>&1 & build=$!
  python3 bench/quant8_probe.py --configs "$CONFIGS" --out "$out/quant8-probe.json" --no-compile 2>&1 | grep -E "^\{|^ |DONE|Error" | tail -30
  wait $build
fi
for runs in "$@"; do
  STEPS=50 IMAGES=4 NO_TABLE=1 RESULTS=/tmp/plans.jsonl CACHE=/tmp/qcache CONFIGS=$CONFIGS RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-300} \
    bash bench/run_gpu.sh "$runs" 2>&1 | grep -E "^RUN|^SKIP|MATRIX|^[a-z0-9_]+ +[a-z]" | cut -c1-400
done
cp /tmp/plans.jsonl /tmp/plans.log "$out/"
python3 - "$out/plans.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    keys = ("impl", "plan", "plan_used", "cap_gib", "compile", "ok", "step_s", "steady_image_s_50", "queue_image_s",
            "psnr_db", "peak_reserved_gib", "work_gib", "host_gib", "host_peak_gib", "load_s", "error")
    print({k: r.get(k) for k in keys if r.get(k) is not None})
PY
