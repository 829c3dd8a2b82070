"""Prints the README's localisation table from this folder's metrics.jsonl (the run's own file)
and eval_step800.json (`mmjax eval` of the final checkpoint, which adds ciou@0.5_bound).

  mmjax train --config configs/av_localisation_shapeworld.py --workdir runs/av_localisation
  mmjax eval --config configs/av_localisation_shapeworld.py --workdir runs/av_localisation
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


def main():
  rows = [json.loads(line) for line in open(HERE / "metrics.jsonl")]
  print("| step | " + " | ".join(COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for row in rows:
    print(f"| {row['step']} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
  record = json.loads((HERE / "eval_step800.json").read_text())
  m = record["metrics"]
  n = int(m["num_clips"])
  print(f"\nStep {record['step']} (`mmjax eval`), seen pairs, n = {n} clips:\n")
  print("| metric | model | centre-box baseline | ceiling for continuous maps |")
  print("|---|---|---|---|")
  for key in ("ciou@0.5", "auc", "pointing"):
    ceiling = f"{m['ciou@0.5_bound']:.3f}" if key == "ciou@0.5" else "1"
    se = math.sqrt(m[key] * (1 - m[key]) / n) if key != "auc" else None
    model = f"{m[key]:.3f}" + (f" ± {se:.3f}" if se is not None else "")
    print(f"| {key} | {model} | {m['baseline_' + key]:.3f} | {ceiling} |")


if __name__ == "__main__":
  main()
