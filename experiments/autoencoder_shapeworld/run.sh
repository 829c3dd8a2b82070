#!/usr/bin/env bash
# Trains the default KL autoencoder config through the one trainer (evaluating every 200 steps)
# and copies its metrics next to this script. Usage: experiments/autoencoder_shapeworld/run.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKDIR=${1:-runs/autoencoder_shapeworld}
start=$(date +%s)
python -m mmjax.cli train --config configs/autoencoder_shapeworld.py --workdir "$WORKDIR"
echo "wall_s=$(( $(date +%s) - start ))"
cp "$WORKDIR/metrics.jsonl" experiments/autoencoder_shapeworld/metrics.jsonl
cp "$WORKDIR/reconstructions.png" experiments/autoencoder_shapeworld/reconstructions.png
