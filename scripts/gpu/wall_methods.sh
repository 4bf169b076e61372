#!/usr/bin/env bash
# Activation statistics, then every PTQ method at W8A8 / W4A16 / W4A16 G128 on the shipped Wall model
# (study spec methods_wall), resumable: a carried sweeps/methods_wall continues where it stopped.
# Usage: bash scripts/gpu/wall_methods.sh
source scripts/gpu/setup.sh
set +e
finish() { tar czf $OUT/methods_wall.tgz sweeps/methods_wall act_scales; ls -la $OUT; }
trap finish EXIT
if [ ! -f act_scales/wm_act_scales_wall_iter2_opt10_eval50.safetensors ]; then
  log "plan-act"; python3 -m wmquant plan-act --config-name plan_wall.yaml model_name=wall tag=fp sta_scale=True n_evals=50 planner.max_iter=2 planner.sub_planner.opt_steps=10 scale_tag=iter2_opt10_eval50 act_scales_dir=act_scales 2>&1 | grep -v "it/s\|pkg_resources" | tail -3
fi
log "sweep"; timeout ${SWEEP_TIMEOUT:-480} python3 -m wmquant sweep study=methods_wall sweep_dir=sweeps/methods_wall act_scales_dir=act_scales 2>&1 | grep -v "it/s\|pkg_resources" | tail -25
log "report"; python3 -m wmquant report sweeps/methods_wall 2>&1 | tail -8
log "done"
