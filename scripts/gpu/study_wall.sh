#!/usr/bin/env bash
# The Wall study on the device machine: Tables 1, 3, 4 and 7 and the engines_wall spec (see study.sh).
# Usage: bash scripts/gpu/study_wall.sh [SECONDS [JOBS]]
ENV_NAME=wall exec bash scripts/gpu/study.sh "$@"
