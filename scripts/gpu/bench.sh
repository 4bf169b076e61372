#!/usr/bin/env bash
# The full GPU benchmark (`wmquant bench`) in one command, within 9 minutes on one H100.
# Usage (device tool, carrying .whl like the other scripts): bash scripts/gpu/bench.sh [PARTS]
#   PARTS: any of h1 protocol rest (default: all three, in that order of priority)
#   h1       GEMM peaks; DINO-WM scale num_hist 1: the original procedure, FP32/BF16/TF32 eager and
#            compiled; real-kernel W8A8/W4A16 rollouts and their agreement with fake quant
#   protocol the full Wall protocol on the shipped model, exact FP32, skipping on and off
#   rest     CEM steps of the shipped Wall and PushT models and of DINO-WM scale num_hist 3
# Writes $OUT/bench_<part>.json (each rewritten after every measurement, so a part cut short by
# its time limit keeps what it measured) and $OUT/bench.log. Predictions: docs/benchmarks_gpu_plan.md.
source scripts/gpu/setup.sh
set +e -o pipefail                   # setup.sh sets -e; a part that times out must not end the script
PARTS=${*:-h1 protocol rest}
DEADLINE=$((SECONDS + 515))          # setup has run; the whole script stays under 9 minutes
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
LOG_FILE=$OUT/bench.log

run_part() {  # run_part NAME MAX_SECONDS ARGS...
  local name=$1 cap=$2; shift 2
  local left=$((DEADLINE - SECONDS)); local limit=$(( left < cap ? left : cap ))
  if [ $limit -lt 20 ]; then log "skip $name: ${left}s left"; return; fi
  log "part $name (limit ${limit}s): wmquant bench $*"
  timeout --signal=TERM --kill-after=10 $limit python3 -m wmquant bench "$@" --json $OUT/bench_$name.json \
    2>&1 | grep -v -e "it/s" -e "^W[0-9]" | tee -a $OUT/bench.log | tail -40
  log "part $name ended with status $?"
}

for part in $PARTS; do
  case $part in
    h1)       run_part h1 270 --sections peaks cem kernels --models dinowm_h1 --original ;;
    protocol) run_part protocol 270 --sections protocol ;;
    rest)     run_part rest 150 --sections peaks cem --models wall pusht dinowm_h3 --original ;;
    *)        log "unknown part $part (valid: h1 protocol rest)" ;;
  esac
done
log "done in ${SECONDS}s"; ls -la $OUT
