#!/usr/bin/env bash
# One GPU call that measures what is pending, most decisive first; each result lands in OUT as it comes, so
# a call cut off keeps what it finished (see bench/RESULTS.md for what each file feeds):
#   bash bench/gpu_session.sh OUT [RUNS ...]
# PARTS picks the parts (default: upscale safety draft probe profile overlap vae; a second call on a warm machine
# names fewer); OVERLAP_FORMATS picks the streaming formats (fp8,bf16); DRAFT_ARGS replaces the draft's prompts and thresholds. RUNS are bench/plans.py matrix lists
# (impl:plan:cap[:compile][:nIMAGES][:g10]), run by bench/run_quant8.sh.
set -u
out=$1; shift
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
MODEL=${MODEL:-/tmp/cogview4-random}
CONFIGS=${CONFIGS:-bench/out/cogview4-6b}
log="$out/session.log"
step() { echo "== $* $(date +%T)" >> "$log"; }
PARTS=" ${PARTS:-upscale safety draft probe profile overlap vae} "
part() { [[ $PARTS == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$log"
python3 -c "import torch, diffusers, transformers as t; print(torch.__version__, diffusers.__version__, t.__version__)" >> "$log" 2>&1
if [ ! -f "$MODEL/vae/config.json" ]; then
  python3 bench/random_model.py "$MODEL" --configs "$CONFIGS" > /tmp/build.log 2>&1 &
  build=$!
fi
# While the model builds: the tiny model's upscale, the classifier, the block-level probes.
part upscale && { step upscale; timeout 120 python3 bench/upscale_proof.py --device cuda --size 1024 --factor 2 > "$out/upscale.json" 2>> "$log"; }
part safety && { step safety; timeout 90 python3 bench/safety_cost.py --device cuda >> "$log" 2>&1; }
part probe && { step probe; python3 bench/quant8_probe.py --configs "$CONFIGS" --out "$out/quant8-probe.json" --no-compile >> "$log" 2>&1; }
part profile && { step profile; python3 bench/quant8_profile.py --configs "$CONFIGS" > "$out/profile.txt" 2>&1; }
part overlap && { step overlap; timeout 170 python3 bench/stream_overlap.py --configs "$CONFIGS" --formats "${OVERLAP_FORMATS:-fp8,bf16}" --out "$out/stream-overlap.jsonl" >> "$log" 2>&1; }
[ -n "${build:-}" ] && wait "$build"
# The VAE's tiled decode against its whole decode: PSNR and peak memory per tile size (what a small card's tile
# may be).
part vae && { step vae; timeout 120 python3 bench/vae_tiles.py --model "$MODEL" --device cuda --out "$out/vae-tiles.jsonl" >> "$log" 2>&1; }
step rows
[ $# -gt 0 ] && RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-240} bash bench/run_quant8.sh "$out" "$@" >> "$log" 2>&1
if part draft; then
  step draft
  # shellcheck disable=SC2086
  timeout 330 python3 bench/draft_bench.py --model "$MODEL" --plan bf16_resident --steps 50 \
    ${DRAFT_ARGS:---prompts 2 --thresholds 0.05,0.1,0.2} --out "$out/draft.jsonl" >> "$log" 2>&1
fi
step done
