#!/usr/bin/env bash
# Checks the fused fake-quant kernels on the GPU, then gives the rest of the call to the Wall study.
#   1. tests/quant/test_fused_fake_quant.py (bit equality with qmath; needs pytest in .whl);
#   2. scripts/gpu/fused_check.py: a finished per-token W8A8 study run re-run with the fused kernels
#      must reproduce its stored result exactly; W4A4 per-tensor and per-token RTN, every episode
#      planning for 3 MPC iterations, timed with the kernels off and on (equal results required);
#   3. scripts/gpu/study_wall.sh for the time left, with the fused kernels only if 1 and 2 passed.
# Usage: bash scripts/gpu/fused_study.sh [SECONDS [JOBS]]   (carry .whl, act_scales, carry_sweeps)
#   REPLAY="SPEC/RUN ..." and TIMED="SPEC/RUN ..." replace the runs of step 2.
# Brings back $OUT/fused_check.json, $OUT/fused_pytest.txt and what study_wall.sh brings back.
source scripts/gpu/setup.sh
set +e
BUDGET=${1:-540}; JOBS=${2:-3}
log "pytest"
python3 -m pytest -q -p no:cacheprovider tests/quant/test_fused_fake_quant.py > $OUT/fused_pytest.txt 2>&1
tests=$?; tail -3 $OUT/fused_pytest.txt
log "fused_check"
REPLAY=${REPLAY-"table3/rtn_w8a8_gpc_ptok-7dc01d4a"}
TIMED=${TIMED-"table3/rtn_w4a4_gpc_pt-16436816 table3/rtn_w4a4_gpc_ptok-3dc525b5"}
python3 scripts/gpu/fused_check.py --out $OUT/fused_check.json $REPLAY --timed $TIMED --iterations 3
check=$?
if [ $tests -ne 0 ] || [ $check -ne 0 ]; then
  log "fused kernels NOT used (pytest $tests, check $check)"; export WMQUANT_FUSED_FAKE_QUANT=0
fi
bash scripts/gpu/study_wall.sh $((BUDGET - SECONDS)) $JOBS
