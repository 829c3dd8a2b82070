#!/usr/bin/env bash
# The text-to-image study end to end: the 32 px CLIP judge, the default DiT run, every kept
# checkpoint judged at guidance 3 (the accuracy-vs-wall-time curve), the last one at guidance
# 0, 1, 2, 3, 5 (the CFG table), then the tables and the curve. Files land next to this script.
# Usage: experiments/t2i_shapeworld/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
HERE=experiments/t2i_shapeworld
python -m mmjax.cli train --config configs/clip_shapeworld.py --workdir "$RUNS/clip32" \
    --config.data.image_size=32 "--config.model.image_encoder.stem_channels=(32,)"
python -m mmjax.cli train --config configs/t2i_shapeworld.py --workdir "$RUNS/t2i"
python "$HERE/judge.py" --diffusion "$RUNS/t2i" --clip "$RUNS/clip32" --step all \
    --per-prompt 4 --guidance 3 --out "$HERE"
python "$HERE/judge.py" --diffusion "$RUNS/t2i" --clip "$RUNS/clip32" --step latest \
    --per-prompt 4 --guidance 0,1,2,5 --out "$HERE"
cp "$RUNS/t2i/train.jsonl" "$RUNS/t2i/metrics.jsonl" "$RUNS/t2i/samples.png" "$HERE/"
cp "$RUNS/clip32/metrics.jsonl" "$HERE/clip32_metrics.jsonl"
python "$HERE/curve.py" "$HERE/judge.jsonl" | tee "$HERE/tables.md"
