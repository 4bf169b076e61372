#!/usr/bin/env bash
# Copies what a resumed sweep needs from sweeps/ into carry_sweeps/, small enough to carry to the
# device machine: sweep.json; every run's run.json; the result.json of every finished run (so it is
# skipped); and the mpc_state.npz of every run that an earlier call cut off (so it continues after
# its last finished MPC iteration instead of starting over).
# Usage: bash scripts/gpu/slim_store.sh [SPEC ...]   (default: every sweep under sweeps/)
set -e
rm -rf carry_sweeps; mkdir -p carry_sweeps
for dir in ${*:-$(ls sweeps)}; do
  src=sweeps/${dir#sweeps/}; name=$(basename $src)
  [ -f $src/sweep.json ] || continue
  mkdir -p carry_sweeps/$name; cp $src/sweep.json carry_sweeps/$name/
  for run_dir in $src/runs/*/; do
    run=$(basename $run_dir)
    keep=run.json
    [ -f $run_dir/result.json ] && keep="run.json result.json"
    [ ! -f $run_dir/result.json ] && [ -f $run_dir/mpc_state.npz ] && keep="run.json mpc_state.npz"
    mkdir -p carry_sweeps/$name/runs/$run
    for f in $keep; do cp $run_dir/$f carry_sweeps/$name/runs/$run/; done
  done
done
echo "finished runs: $(find carry_sweeps -name result.json | wc -l); cut-off runs with a checkpoint: $(find carry_sweeps -name mpc_state.npz | wc -l)"
du -sh carry_sweeps
