#!/usr/bin/env bash
# The GPU benchmark (`wmquant bench`) in one command, within 11 minutes on one H100.
# Usage (device tool, carrying .whl like the other scripts): bash scripts/gpu/bench.sh [PARTS]
#   PARTS: any of h1 kernels_h1 kernels_h3 rest protocol (default: the first four, in that order
#          of priority; the protocol part was measured in November and runs only when named)
#   h1         GEMM peaks (FP32, TF32, BF16, INT8, FP8); DINO-WM scale num_hist 1: the original
#              procedure, FP32/BF16/TF32 eager and compiled, BF16 compiled with CUDA graphs
#   kernels_h1 real-kernel FP8 W8A8, INT8 W8A8 (torch and fused Triton kernels, each eager and
#              compiled) and W4A16 rollouts against
#              FP32/BF16 at DINO-WM scale num_hist 1, at 300 samples and at 32, and their agreement
#              with fake quantization
#   kernels_h3 the same at num_hist 3 (the PushT setting)
#   rest       CEM steps of the shipped Wall and PushT models and of DINO-WM scale num_hist 3
#   protocol   the full Wall protocol on the shipped model, exact FP32, skipping on and off
# First, where pytest is carried, the CUDA tests of the real kernels (tests/kernels, marker gpu; a
# few seconds) and the fused INT8 kernels' tests (compiled on the GPU; on the CPU they run in
# Triton's interpreter) into $OUT/kernels_pytest.txt.
# Writes $OUT/bench_<part>.json (each rewritten after every measurement, so a part cut short by
# its time limit keeps what it measured) and $OUT/bench.log. Predictions: docs/benchmarks_gpu_plan.md.
source scripts/gpu/setup.sh
set +e -o pipefail                   # setup.sh sets -e; a part that times out must not end the script
PARTS=${*:-h1 kernels_h1 kernels_h3 rest}
DEADLINE=$((SECONDS + 630))          # setup has run; the whole script stays under 11 minutes
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

if python3 -c "import pytest" 2>/dev/null; then
  log "pytest -m gpu tests/kernels"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels > $OUT/kernels_pytest.txt 2>&1
  log "kernel tests ended with status $?"; tail -3 $OUT/kernels_pytest.txt
  timeout 180 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_fused_int8.py >> $OUT/kernels_pytest.txt 2>&1
  log "fused INT8 kernel tests ended with status $?"; tail -3 $OUT/kernels_pytest.txt
fi

for part in $PARTS; do
  case $part in
    h1)         run_part h1 170 --sections peaks cem --models dinowm_h1 --original ;;
    kernels_h1) run_part kernels_h1 200 --sections peaks kernels --kernel-model dinowm_h1 ;;
    kernels_h3) run_part kernels_h3 150 --sections peaks kernels --kernel-model dinowm_h3 ;;
    rest)       run_part rest 110 --sections peaks cem --models wall pusht dinowm_h3 --original ;;
    protocol)   run_part protocol 270 --sections protocol ;;
    *)          log "unknown part $part (valid: h1 kernels_h1 kernels_h3 rest protocol)" ;;
  esac
done
log "done in ${SECONDS}s"; ls -la $OUT
