"""Prints the README's results table from this folder's metrics.jsonl (the run's own file).

  python experiments/av_shapeworld/table.py
"""
import json
import pathlib

HERE = pathlib.Path(__file__).parent
COLUMNS = ("correspondence_accuracy", "correspondence_accuracy_heldout", "a2v_r@1", "v2a_r@1",
           "ciou@0.5", "baseline_ciou@0.5", "auc", "baseline_auc", "pointing",
           "baseline_pointing", "sync_acc", "sync_acc_1")


def main():
  rows = [json.loads(line) for line in open(HERE / "metrics.jsonl")]
  print("| step | " + " | ".join(COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for row in rows:
    print(f"| {row['step']} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
  main()
