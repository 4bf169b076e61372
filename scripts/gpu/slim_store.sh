#!/usr/bin/env bash
# Copies what a resumed sweep needs (sweep.json, and run.json + result.json of every finished run)
# from sweeps/ into carry_sweeps/, small enough to carry to the device machine.
# Usage: bash scripts/gpu/slim_store.sh [SPEC ...]   (default: every sweep under sweeps/)
set -e
rm -rf carry_sweeps; mkdir -p carry_sweeps
for dir in ${*:-$(ls sweeps)}; do
  src=sweeps/${dir#sweeps/}; name=$(basename $src)
  [ -f $src/sweep.json ] || continue
  mkdir -p carry_sweeps/$name; cp $src/sweep.json carry_sweeps/$name/
  for result in $src/runs/*/result.json; do
    [ -f "$result" ] || continue
    run=$(basename $(dirname $result)); mkdir -p carry_sweeps/$name/runs/$run
    cp $src/runs/$run/run.json $result carry_sweeps/$name/runs/$run/
  done
done
du -sh carry_sweeps
