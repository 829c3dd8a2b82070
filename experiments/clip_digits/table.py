"""Prints the README's results table from this folder's metrics.jsonl (the run's own file).

  python experiments/clip_digits/table.py
"""
import json
import math
import pathlib

HERE = pathlib.Path(__file__).parent
HELD_OUT = 359  # round(0.2 * 1797) records of the seeded held-out split (data.eval_fraction)


def main():
  print("| step | zeroshot_top1 (359 held-out images) | standard error |")
  print("|---|---|---|")
  for line in open(HERE / "metrics.jsonl"):
    row = json.loads(line)
    p = row["zeroshot_top1"]
    print(f"| {row['step']} | {p:.3f} | {math.sqrt(p * (1 - p) / HELD_OUT):.3f} |")


if __name__ == "__main__":
  main()
