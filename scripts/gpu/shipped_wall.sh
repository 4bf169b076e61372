#!/usr/bin/env bash
# Data, training, landscape, FP protocol and ceiling of the shipped Wall model, on one GPU.
# Usage (device tool): bash scripts/gpu/shipped_wall.sh   (writes into $OUT)
source scripts/gpu/setup.sh
set -o pipefail
W=/tmp/wmq; R=$W/report/wall; mkdir -p $W $R $OUT/wall
log "data"; SECONDS=0
python3 -m wmquant data --env wall --out $W/data/wall --episodes 2000 --seed 0 --workers 16 --quiet --json > $R/data.json
echo "data seconds: $SECONDS"
log "train"; python3 -m wmquant train --config-name train_wall.yaml dataset_path=$W/data/wall output_dir=$W/runs/wall 2>&1 | grep -v "it/s" | tail -45
cp $W/runs/wall/train_summary.json $W/runs/wall/train_log.jsonl $W/runs/wall/train_config.yaml $R/
log "landscape"; python3 -m wmquant diagnose landscape --model $W/runs/wall/model --out $R/landscape
log "fp plan"; python3 -m wmquant plan --config-name plan_wall.yaml model_name=$W/runs/wall/model output_dir=$R/plan_fp 2>&1 | grep -v "it/s" | tail -8
log "ceiling"; python3 -m wmquant ceiling --config-name plan_wall.yaml model_name=$W/runs/wall/model output_dir=$R/ceiling 2>&1 | grep -v "it/s" | tail -5
cp $W/runs/wall/model/* $OUT/wall/
tar czf $OUT/wall/report.tgz -C $W/report wall
log "done"; ls -la $OUT/wall
