#!/usr/bin/env bash
# The full FP protocol and the planning ceiling of the shipped PushT model on one GPU.
# The evaluation goals come from the validation split of the dataset the model was trained on,
# regenerated here (deterministic for its seed). Usage: bash scripts/gpu/pusht_eval.sh
source scripts/gpu/setup.sh
set +e
W=/tmp/wmq; R=$W/report/pusht_eval; mkdir -p $W $R $OUT/pusht_eval
finish() { tar czf $OUT/pusht_eval/report.tgz -C $W/report pusht_eval; ls -la $OUT/pusht_eval; }
trap finish EXIT
log "data"; python3 -m wmquant data --env pusht --out $W/data/pusht --episodes 2000 --seed 0 --render-size 64 --video pth --policy pusher --workers 16 --quiet --json > $R/data.json
log "fp plan"; timeout ${PLAN_TIMEOUT:-400} python3 -m wmquant plan --config-name plan_pusht.yaml model_name=pusht dataset_path=$W/data/pusht output_dir=$R/plan_fp 2>&1 | grep -v "it/s\|pkg_resources" | tail -8
log "ceiling"; timeout ${CEIL_TIMEOUT:-90} python3 -m wmquant ceiling --config-name plan_pusht.yaml model_name=pusht dataset_path=$W/data/pusht output_dir=$R/ceiling planner.max_iter=${CEIL_ITERS:-2} 2>&1 | grep -v "it/s\|pkg_resources" | tail -5
log "done"
