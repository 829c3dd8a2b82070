#!/usr/bin/env bash
# Trains and evaluates both VQA heads with the default config through the one trainer;
# per-type test accuracy is in each workdir's metrics.jsonl (written at every eval_every).
# Usage: bash experiments/vqa_shapeworld/run.sh [RUNS_DIR] [extra --config.X=Y flags...]
set -euo pipefail
runs=${1:-runs}; shift || true
for head in classifier generative; do
  /usr/bin/time -f "$head wall %e s" python -m mmjax.cli train \
      --config "configs/vqa_shapeworld.py:$head" --workdir "$runs/vqa_$head" --no-progress "$@"
done
