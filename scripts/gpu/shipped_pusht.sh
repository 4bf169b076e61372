#!/usr/bin/env bash
# Data, training and landscape of the shipped PushT model on one GPU, then (time permitting) the FP
# protocol and the planning ceiling. Usage (device tool): bash scripts/gpu/shipped_pusht.sh
source scripts/gpu/setup.sh
set -o pipefail
W=/tmp/wmq; R=$W/report/pusht; mkdir -p $W $R $OUT/pusht
finish() { cp $W/runs/pusht/model/* $OUT/pusht/ 2>/dev/null; tar czf $OUT/pusht/report.tgz -C $W/report pusht; ls -la $OUT/pusht; }
trap finish EXIT
log "data"; SECONDS=0
python3 -m wmquant data --env pusht --out $W/data/pusht --episodes 2000 --seed 0 --render-size 64 --video pth --policy pusher --workers 16 --quiet --json > $R/data.json
echo "data seconds: $SECONDS"
log "train"; python3 -m wmquant train --config-name train_pusht.yaml dataset_path=$W/data/pusht output_dir=$W/runs/pusht 2>&1 | grep -v "it/s" | tail -40
cp $W/runs/pusht/train_summary.json $W/runs/pusht/train_log.jsonl $W/runs/pusht/train_config.yaml $R/
log "landscape"; python3 -m wmquant diagnose landscape --model $W/runs/pusht/model --out $R/landscape
log "fp plan"; timeout ${PLAN_TIMEOUT:-170} python3 -m wmquant plan --config-name plan_pusht.yaml model_name=$W/runs/pusht/model dataset_path=$W/data/pusht output_dir=$R/plan_fp 2>&1 | grep -v "it/s" | tail -8
log "ceiling"; timeout ${CEIL_TIMEOUT:-100} python3 -m wmquant ceiling --config-name plan_pusht.yaml model_name=$W/runs/pusht/model dataset_path=$W/data/pusht output_dir=$R/ceiling planner.max_iter=${CEIL_ITERS:-3} 2>&1 | grep -v "it/s" | tail -5
log "done"
