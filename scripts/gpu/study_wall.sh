#!/usr/bin/env bash
# The Wall study on the device machine: Tables 1, 3, 4 and 7 and the engines_wall spec on the
# shipped Wall model with the paper's protocol, as one queue (scripts/gpu/study_queue.py: shared
# runs once, cheapest first, within a time budget), resumable across calls.
#
# Usage: bash scripts/gpu/study_wall.sh [SECONDS [JOBS]]   (defaults 520 s, 3 runs at a time)
# Carry: .whl, act_scales, and carry_sweeps (made here by `bash scripts/gpu/slim_store.sh`: the
# run.json/result.json of every finished run, so that finished runs are skipped).
# Brings back $OUT/study_<spec>.tgz with every run finished in this call (unpack into sweeps/).
source scripts/gpu/setup.sh
set +e
BUDGET=${1:-520}; JOBS=${2:-3}
SPECS="table7 table3 table1 table4 engines_wall"
export OMP_NUM_THREADS=4
log() { echo "[$(date +%H:%M:%S)] $*"; }
mkdir -p sweeps
[ -d carry_sweeps ] && cp -r carry_sweeps/. sweeps/
(cd sweeps && find . -name result.json | sort) > /tmp/results_before.txt
if [ ! -f act_scales/wm_act_scales_wall_iter2_opt10_eval50.safetensors ]; then
  log "plan-act"; python3 -m wmquant plan-act --config-name plan_wall.yaml model_name=wall tag=fp sta_scale=True \
    n_evals=50 planner.max_iter=2 planner.sub_planner.opt_steps=10 scale_tag=iter2_opt10_eval50 \
    act_scales_dir=act_scales 2>&1 | grep -v "it/s" | tail -3
fi
log "queue"
python3 scripts/gpu/study_queue.py --seconds $((BUDGET - SECONDS)) --jobs $JOBS --first engines_wall --set act_scales_dir=act_scales $SPECS \
  2>&1 | tee sweeps/queue_log_$(date +%H%M%S).txt
(cd sweeps && find . -name result.json | sort) > /tmp/results_after.txt
for spec in $SPECS; do
  new=$(comm -13 /tmp/results_before.txt /tmp/results_after.txt | grep "^./$spec/" | xargs -r -n1 dirname)
  (cd sweeps && tar czf $OUT/study_$spec.tgz $spec/sweep.json $new)
  log "$spec: $(echo $new | wc -w) new run(s)"
done
cp sweeps/queue_log_* $OUT/ 2>/dev/null
log "done"; ls -la $OUT
