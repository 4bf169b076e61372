#!/usr/bin/env bash
# The shipped PushT model's full FP protocol (30 MPC iterations) and planning ceiling, across
# device calls: both resume from their mpc_state.npz under pusht_protocol/ (carry pusht_protocol/
# back in), and time left after the plan goes to the Wall study queue (scripts/gpu/study_wall.sh).
# Usage: bash scripts/gpu/pusht_protocol.sh [SECONDS]   (default 545)
# Brings back $OUT/pusht_protocol.tgz (unpack in the repo root) and the study tarballs.
source scripts/gpu/setup.sh
set +e
BUDGET=${1:-545}
P=pusht_protocol; W=/tmp/wmq; mkdir -p $P $W
if [ ! -f $W/data/pusht/wmquant_dataset.json ]; then  # a machine still warm from the last call keeps it
  log "data"; python3 -m wmquant data --env pusht --out $W/data/pusht --episodes 2000 --seed 0 --render-size 64 --video pth --policy pusher --workers 16 --quiet --json > $W/data.json && cp $W/data.json $P/data.json
fi
if [ ! -f $P/ceiling/result.json ]; then
  log "ceiling in the background (CPU)"
  (timeout $((BUDGET - SECONDS - 15)) python3 -m wmquant ceiling --config-name plan_pusht.yaml model_name=pusht \
     dataset_path=$W/data/pusht output_dir=$P/ceiling > $P/ceiling_log.txt 2>&1 &)
fi
if [ ! -f $P/plan_fp/result.json ]; then
  log "fp plan (resumes from its checkpoint)"
  timeout $((BUDGET - SECONDS - 10)) python3 -m wmquant plan --config-name plan_pusht.yaml model_name=pusht \
    dataset_path=$W/data/pusht output_dir=$P/plan_fp 2>&1 | grep -v "it/s\|pkg_resources" | tail -6
fi
show() { python3 -c "import json,sys; p=json.load(open(sys.argv[1])); print(sys.argv[1], p.get('iterations_done', 'done'), [round(x, 2) for x in p['success_rate_by_iter']], round(p.get('seconds', p.get('wall_seconds', 0))))" $1 2>/dev/null; }
for f in $P/plan_fp/result.json $P/plan_fp/progress.json $P/ceiling/result.json $P/ceiling/progress.json; do show $f; done
tar czf $OUT/pusht_protocol.tgz $P
LEFT=$((BUDGET - SECONDS))
if [ -f $P/plan_fp/result.json ] && [ $LEFT -gt 150 ]; then log "Wall study for ${LEFT}s"; bash scripts/gpu/study_wall.sh $((LEFT + 15)); fi
log "done"; ls -la $OUT
