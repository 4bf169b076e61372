#!/usr/bin/env bash
# Retrains the PushT world model for longer on the device machine and measures its first MPC
# iterations (with CEILING=1, the planning ceiling runs on the CPU cores meanwhile; it slows training).
# The encoder is the shipped model's (its landscape is unchanged): carry pusht_encoder/, made here by
#   python -c "from safetensors.torch import load_file, save_file; sd = load_file('src/wmquant/assets/models/pusht/model.safetensors'); save_file({k[8:]: v.contiguous() for k, v in sd.items() if k.startswith('encoder.')}, 'pusht_encoder/encoder.safetensors')"
# Usage: bash scripts/gpu/retrain_pusht.sh [STEPS [TRAIN_SECONDS]]
# Brings back $OUT/pusht2/{model.safetensors,config.yaml} and $OUT/pusht2/report.tgz.
source scripts/gpu/setup.sh
set +e
STEPS=${1:-5000}; TRAIN_SECONDS=${2:-430}
W=/tmp/wmq; R=$W/report/pusht2; mkdir -p $W $R $OUT/pusht2
finish() {
  cp $W/run/model/model.safetensors $W/run/model/config.yaml $OUT/pusht2/ 2>/dev/null
  cp $W/run/train_log.jsonl $W/run/train_summary.json $W/run/train_config.yaml $R/ 2>/dev/null
  tar czf $OUT/pusht2/report.tgz -C $W/report pusht2; ls -la $OUT/pusht2
}
trap finish EXIT
if [ ! -f $W/data/pusht/wmquant_dataset.json ]; then  # a machine still warm from the last call keeps it
  log "data"; python3 -m wmquant data --env pusht --out $W/data/pusht --episodes 2000 --seed 0 --render-size 64 --video pth --policy pusher --workers 16 --quiet --json > $R/data.json
fi
[ "${CEILING:-0}" = 1 ] && log "ceiling in the background (CPU)" && (timeout $((TRAIN_SECONDS + 120)) python3 -m wmquant ceiling --config-name plan_pusht.yaml model_name=pusht dataset_path=$W/data/pusht \
   output_dir=$R/ceiling > $R/ceiling_log.txt 2>&1 &)
log "train ($STEPS steps)"; timeout $TRAIN_SECONDS python3 -m wmquant train --config-name train_pusht.yaml dataset_path=$W/data/pusht \
  output_dir=$W/run encoder_checkpoint=pusht_encoder/encoder.safetensors training.steps=$STEPS 2>&1 | grep -v "it/s\|pkg_resources" | tail -4
log "fp plan (as many iterations as fit)"; timeout $((560 - SECONDS)) python3 -m wmquant plan --config-name plan_pusht.yaml \
  model_name=$W/run/model dataset_path=$W/data/pusht output_dir=$R/plan_fp 2>&1 | grep -v "it/s\|pkg_resources" | tail -4
cat $R/plan_fp/progress.json 2>/dev/null | python3 -c "import json,sys; p=json.load(sys.stdin); print('plan', p['iterations_done'], p['success_rate_by_iter'], round(p['seconds']))"
cat $R/ceiling/progress.json 2>/dev/null | python3 -c "import json,sys; p=json.load(sys.stdin); print('ceiling', p['iterations_done'], p['success_rate_by_iter'], round(p['seconds']))"
log "done"
