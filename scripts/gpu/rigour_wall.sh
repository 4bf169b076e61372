#!/usr/bin/env bash
# The study-rigour runs on the device machine: the G32 arm (groups_wall), the mechanism reruns
# (mechanisms_wall) and the replicates (replicates_wall), as one resumable queue
# (scripts/gpu/study_queue.py), after training the two replicate models if they are not here yet.
#
# Usage: bash scripts/gpu/rigour_wall.sh [SECONDS [JOBS]]   (defaults 1500 s, 4 runs at a time)
# Carry: .whl, act_scales, carry_sweeps (the published results: `cp -r results/wall_study carry_sweeps`,
# plus any sweep of an earlier call), and wall_seed1/ wall_seed2/ once an earlier call made them.
# The replicates' published draw (shipped model, calibration set 0) has the run ids of Tables 1, 3
# and 7, so the queue copies those finished runs instead of running them again.
# Brings back $OUT/rigour.tgz (every run finished in this call, and the checkpoint of every run cut
# off) and $OUT/replicate_models.tgz (the two trained models, when trained in this call).
source scripts/gpu/setup.sh
set +e
BUDGET=${1:-1500}; JOBS=${2:-4}
SPECS=${SPECS:-"mechanisms_wall groups_wall replicates_wall table1 table3 table7"}
export OMP_NUM_THREADS=4
mkdir -p sweeps
[ -d carry_sweeps ] && cp -rn carry_sweeps/. sweeps/
(cd sweeps && find . -name result.json | sort) > /tmp/results_before.txt
trained=""
for seed in 1 2; do
  if [ ! -f wall_seed$seed/model.safetensors ]; then
    [ -d /tmp/wmq/data/wall ] || { log "data"; python3 -m wmquant data --env wall --out /tmp/wmq/data/wall \
      --episodes 2000 --seed 0 --workers 16 --quiet --json > /dev/null; }
    log "train wall_seed$seed"
    python3 -m wmquant train --config-name train_wall.yaml dataset_path=/tmp/wmq/data/wall \
      output_dir=/tmp/wmq/runs/wall_seed$seed seed=$seed encoder_pretrain.seed=$seed training.seed=$seed \
      2>&1 | grep -v "it/s" | tail -3
    cp -r /tmp/wmq/runs/wall_seed$seed/model wall_seed$seed && trained="$trained wall_seed$seed"
  fi
done
[ -n "$trained" ] && tar czf $OUT/replicate_models.tgz $trained
if [ ! -f act_scales/wm_act_scales_wall_iter2_opt10_eval50.safetensors ]; then
  log "plan-act"; python3 -m wmquant plan-act --config-name plan_wall.yaml model_name=wall tag=fp sta_scale=True \
    n_evals=50 planner.max_iter=2 planner.sub_planner.opt_steps=10 scale_tag=iter2_opt10_eval50 \
    act_scales_dir=act_scales 2>&1 | grep -v "it/s" | tail -3
fi
log "queue"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > $OUT/gpu_util.txt 2>&1 &
python3 scripts/gpu/study_queue.py --seconds $((BUDGET - SECONDS)) --jobs $JOBS --first mechanisms_wall groups_wall \
  --set act_scales_dir=act_scales $SPECS 2>&1 | tee sweeps/queue_log_$(date +%H%M%S).txt
(cd sweeps && find . -name result.json | sort) > /tmp/results_after.txt
members=""
for spec in mechanisms_wall groups_wall replicates_wall; do
  new=$(comm -13 /tmp/results_before.txt /tmp/results_after.txt | grep "^./$spec/" | xargs -r -n1 dirname)
  partial=$(cd sweeps && find $spec/runs -name mpc_state.npz 2>/dev/null | while read f; do d=$(dirname $f); \
    [ -f $d/result.json ] || echo "$d/run.json $f"; done)
  members="$members $spec/sweep.json $new $partial"
  log "$spec: $(echo $new | wc -w) new run(s), $(($(echo $partial | wc -w) / 2)) cut off with a checkpoint"
done
(cd sweeps && tar czf $OUT/rigour.tgz $members)
cp sweeps/queue_log_* $OUT/ 2>/dev/null
log "done"; ls -la $OUT
