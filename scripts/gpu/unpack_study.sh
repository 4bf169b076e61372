#!/usr/bin/env bash
# Unpacks the study tarballs that a device call of study_wall.sh brought back into sweeps/, then
# removes the checkpoint of every run that now has its result (a checkpoint brought back by an
# earlier call, for a run that a later call finished).
# Usage: bash scripts/gpu/unpack_study.sh DIR   (DIR holds study_*.tgz)
set -e
[ -d "${1:-}" ] || { echo "usage: bash scripts/gpu/unpack_study.sh DIR (a folder with study_*.tgz)" >&2; exit 2; }
mkdir -p sweeps
for archive in "$1"/study_*.tgz; do
  [ -f "$archive" ] || continue
  tar xzf "$archive" -C sweeps
done
find sweeps -name mpc_state.npz | while read -r state; do
  if [ -f "$(dirname "$state")/result.json" ]; then rm -f "$state"; fi
done
for sweep in sweeps/*/; do
  [ -f $sweep/sweep.json ] || continue
  echo "$(basename $sweep): $(find $sweep -name result.json | wc -l) finished, $(find $sweep -name mpc_state.npz | wc -l) cut off with a checkpoint"
done
