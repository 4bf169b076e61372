#!/usr/bin/env bash
# Issue 14's retraining: a PushT world model trained on demonstration-like (expert) data, then the
# paper's protocol (50 episodes, 30 MPC iterations, CEM 300/30/30, FP32) and the planning ceiling on
# the same goals, with the open-loop error. Everything resumes across device calls: carry
# pusht_model/ back in (training checkpoints, mpc_state.npz of the plan and the ceiling).
# Usage (device tool): [RES=64|112|128] [ROLLOUT=K] [STEPS=N] [NAME=...] bash scripts/gpu/pusht_model.sh [BUDGET_SECONDS]
#   RES      render and model resolution; 8 px patches at 64, 16 px at 128 (64 tokens either way), 8 px
#            at 112 (DINO-WM's 14 x 14 grid, 196 tokens; add EXTRA=training.cache_latents=false on a card
#            without room for 28 GiB of cached latents)
#   ROLLOUT  K-step rollout loss (training.rollout_steps; 0 = teacher forcing only, as DINO-WM)
#   STEPS    world-model training steps (default 3000); EXTRA: more `wmquant train` overrides
# Brings back $OUT/pusht_model.tgz (unpack in the repo root).
source scripts/gpu/setup.sh
set +e
BUDGET=${1:-1500}
RES=${RES:-64}; ROLLOUT=${ROLLOUT:-0}; STEPS=${STEPS:-3000}
PATCH=$([ "$RES" = 128 ] && echo 16 || echo 8)
NAME=${NAME:-r${RES}_k${ROLLOUT}_s${STEPS}}
P=pusht_model/$NAME; W=/tmp/wmq; DATA=$W/data/pusht_expert_$RES; mkdir -p $P $W
left() { echo $((BUDGET - SECONDS - ${1:-0})); }
finish() { tar czf $OUT/pusht_model.tgz pusht_model; ls -la $OUT; }
trap finish EXIT

if [ ! -f $DATA/wmquant_dataset.json ]; then  # a machine still warm from the last call keeps it
  log "data (expert, $RES px)"
  python3 -m wmquant data --env pusht --out $DATA --episodes 2000 --seed 0 --render-size $RES --video pth --workers 16 --quiet > $P/data.txt
fi
if [ ! -f $P/run/model/model.safetensors ]; then
  log "train $NAME (resumes from $P/run/checkpoints)"
  timeout $(left 60) python3 -m wmquant train --config-name train_pusht.yaml dataset_path=$DATA output_dir=$P/run \
    render_size=$RES model.img_size=$RES model.encoder.patch_size=$PATCH training.steps=$STEPS \
    training.rollout_steps=$ROLLOUT checkpoint_every=500 $EXTRA 2>&1 | grep -v "it/s\|pkg_resources" | tail -6
fi
[ -f $P/run/model/model.safetensors ] || { log "training not finished; call again"; exit 0; }
if [ ! -f $P/run/model/goals.safetensors ]; then
  python3 -m wmquant data --env pusht --goals-from $DATA --out $P/run/model/goals.safetensors --train-episodes 200
  python3 - "$P/run/model/config.yaml" <<'EOF'
import sys, yaml
path = sys.argv[1]
document = yaml.safe_load(open(path))
document["planning"]["goals_file"] = "goals.safetensors"
open(path, "w").write(yaml.safe_dump(document, sort_keys=False))
EOF
fi
[ -f $P/open_loop/open_loop.json ] || python3 -m wmquant diagnose rollout --model $P/run/model --out $P/open_loop | tail -8
if [ ! -f $P/ceiling/result.json ]; then
  log "ceiling in the background (CPU)"
  (timeout $(left 20) python3 -m wmquant ceiling --config-name plan_pusht.yaml model_name=$P/run/model \
     output_dir=$P/ceiling > $P/ceiling_log.txt 2>&1 &)
fi
if [ ! -f $P/plan_fp/result.json ]; then
  log "fp plan (resumes from its checkpoint)"
  timeout $(left 15) python3 -m wmquant plan --config-name plan_pusht.yaml model_name=$P/run/model \
    output_dir=$P/plan_fp 2>&1 | grep -v "it/s\|pkg_resources" | tail -8
fi
show() { python3 -c "import json,sys; p=json.load(open(sys.argv[1])); print(sys.argv[1], p.get('iterations_done', 'done'), [round(x, 2) for x in p['success_rate_by_iter']], round(p.get('seconds', p.get('wall_seconds', 0))))" $1 2>/dev/null; }
for f in $P/plan_fp/result.json $P/plan_fp/progress.json $P/ceiling/result.json $P/ceiling/progress.json; do show $f; done
log "done"
