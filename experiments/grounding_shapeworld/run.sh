#!/usr/bin/env bash
# Trains and evaluates one grounding head with the default config through the one trainer;
# acc@0.5 / acc@0.75 / mean IoU on the test split are in the workdir's metrics.jsonl (written
# every eval_every steps and at the end).
# Usage: bash experiments/grounding_shapeworld/run.sh HEAD [RUNS_DIR] [extra --config.X=Y ...]
#   HEAD: regression | tokens
set -euo pipefail
head=${1:?usage: run.sh regression|tokens [RUNS_DIR] [overrides...]}; shift
runs=${1:-runs}; shift || true
/usr/bin/time -f "$head wall %e s" nice -n 19 python -m mmjax.cli train \
    --config "configs/grounding_shapeworld.py:$head" --workdir "$runs/grounding_$head" \
    --no-progress "$@"
