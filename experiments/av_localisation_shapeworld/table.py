"""Prints the README's localisation tables from this folder's metrics.jsonl (the run's own file)
and eval_step800.json (`mmjax eval` of the final checkpoint, which adds ciou@0.5_bound), and
from the larger-objects runs' metrics_large_objects*.jsonl (their last rows have the bound).

  mmjax train --config configs/av_localisation_shapeworld.py --workdir runs/av_localisation
  mmjax eval --config configs/av_localisation_shapeworld.py --workdir runs/av_localisation
  mmjax train --config configs/av_localisation_shapeworld.py --workdir runs/av_loc_large \
      "--config.data.size_ranges=((0.5, 0.58), (0.62, 0.7))"
  mmjax train --config configs/av_localisation_shapeworld.py --workdir runs/av_loc_large_1400 \
      "--config.data.size_ranges=((0.5, 0.58), (0.62, 0.7))" --config.total_steps=1400 \
      --config.eval_every=350 --config.checkpoint_every=700
  python experiments/av_localisation_shapeworld/table.py

Standard errors are sqrt(p (1 - p) / n) over the n = eval.num_clips clips (a clip's 8 frames are
not independent, so n counts clips, not frames: n = num_clips, the test clips of seen pairs).
"""
import json
import math
import pathlib

HERE = pathlib.Path(__file__).parent
COLUMNS = ("correspondence_accuracy", "ciou@0.5", "baseline_ciou@0.5", "auc", "baseline_auc",
           "pointing", "baseline_pointing", "ciou@0.5_heldout", "pointing_heldout")


def training_table(rows: list[dict]) -> None:
  print("| step | " + " | ".join(COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for row in rows:
    print(f"| {row['step']} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")


def summary(step: int, m: dict, source: str) -> None:
  n = int(m["num_clips"])
  print(f"\nStep {step} ({source}), seen pairs, n = {n} clips:\n")
  print("| metric | model | centre-box baseline | ceiling for continuous maps |")
  print("|---|---|---|---|")
  for key in ("ciou@0.5", "auc", "pointing"):
    ceiling = f"{m['ciou@0.5_bound']:.3f}" if key == "ciou@0.5" else "1"
    se = math.sqrt(m[key] * (1 - m[key]) / n) if key != "auc" else None
    model = f"{m[key]:.3f}" + (f" ± {se:.3f}" if se is not None else "")
    print(f"| {key} | {model} | {m['baseline_' + key]:.3f} | {ceiling} |")


def main():
  training_table([json.loads(line) for line in open(HERE / "metrics.jsonl")])
  record = json.loads((HERE / "eval_step800.json").read_text())
  summary(record["step"], record["metrics"], "`mmjax eval`")
  print("\nLarger objects (metrics_large_objects.jsonl):\n")
  rows = [json.loads(line) for line in open(HERE / "metrics_large_objects.jsonl")]
  training_table(rows)
  summary(rows[-1]["step"], rows[-1], "the run's last evaluation")
  print("\nLarger objects, 1,400 steps (metrics_large_objects_1400.jsonl):\n")
  rows = [json.loads(line) for line in open(HERE / "metrics_large_objects_1400.jsonl")]
  training_table(rows)
  summary(rows[-1]["step"], rows[-1], "the run's last evaluation")


if __name__ == "__main__":
  main()
