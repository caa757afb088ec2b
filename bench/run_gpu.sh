#!/usr/bin/env bash
# Run the plan benchmark on a GPU machine, from the repo root:
#   bash bench/run_gpu.sh RUNS [RUNS ...]
# Each RUNS is bench/plans.py's --runs list (impl:plan:cap[:compile][:reload][:nIMAGES][:sSTEPS],...);
# a cap "c8" stands for a real 8 GiB card (PyTorch capped below it by the measured CUDA context),
# "reload" measures a cold start and a second start from the quantized cache ($CACHE). After
# each list the plan table (engine/plan_table.json) is rewritten from every result so far, so a later
# list's `auto` runs choose from the freshly measured table (NO_TABLE=1: keep the committed table).
# The full-size random CogView4-6B is built once into $MODEL (31 GB) from $CONFIGS
# (default ../shared/cogview4-6b).
# diffusers and bitsandbytes may come as wheels in .whl/ (see bench/RESULTS.md).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
MODEL=${MODEL:-/tmp/cogview4-random}
CONFIGS=${CONFIGS:-../shared/cogview4-6b}
RESULTS=${RESULTS:-/tmp/plans.jsonl}
STEPS=${STEPS:-4}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers, accelerate, bitsandbytes as b; print(torch.__version__, diffusers.__version__, transformers.__version__, accelerate.__version__, b.__version__)"
if [ ! -f "$MODEL/vae/config.json" ]; then
  python3 bench/random_model.py "$MODEL" --configs "$CONFIGS" || exit 1
fi
for runs in "$@"; do
  python3 bench/plans.py matrix --model "$MODEL" --runs "$runs" --out "$RESULTS" --steps "$STEPS" \
    --images "${IMAGES:-2}" --budget-s "${BUDGET_S:-1500}" --run-timeout-s "${RUN_TIMEOUT_S:-240}" --cache-dir "${CACHE:-/tmp/qcache}" \
    --quality "${QUALITY:-balanced}"
  if [ -z "${NO_TABLE:-}" ]; then
    python3 bench/plans.py table ${BASELINE:-} "$RESULTS" --write --keep-missing > /tmp/table.md
    echo "TABLE WRITTEN"
  fi
done
echo "MATRIX FINISHED"
