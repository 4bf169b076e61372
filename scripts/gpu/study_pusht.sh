#!/usr/bin/env bash
# The PushT study on the device machine: Tables 2, 8, 5 and 6 on the shipped PushT model (see study.sh).
# Carry the full .whl (pymunk and pygame). Unpack what it brings back with unpack_study.sh, then copy
# the finished runs into results/pusht_study/<spec>/.
# Usage: bash scripts/gpu/study_pusht.sh [SECONDS [JOBS]]
ENV_NAME=pusht exec bash scripts/gpu/study.sh "$@"
