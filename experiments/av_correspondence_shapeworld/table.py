"""Prints the README's table from this folder's metrics.jsonl (the run's own file).

  mmjax train --config configs/av_correspondence_shapeworld.py --workdir runs/av_correspondence
  python experiments/av_correspondence_shapeworld/table.py

± is the binomial standard error of the correspondence accuracy, over num_clips seen-pair clips
and num_clips_heldout held-out-pair clips.
"""
import json
import math
import pathlib

HERE = pathlib.Path(__file__).parent


def main():
  rows = [json.loads(line) for line in open(HERE / "metrics.jsonl")]
  se = lambda p, n: math.sqrt(p * (1 - p) / n)
  print("| step | correspondence_accuracy (seen) | held-out | a2v_r@1 | v2a_r@1 | a2v_r@5 | "
        "v2a_r@5 |")
  print("|---" * 7 + "|")
  for r in rows:
    seen, held = r["correspondence_accuracy"], r["correspondence_accuracy_heldout"]
    print(f"| {r['step']} | {seen:.3f} ± {se(seen, r['num_clips']):.3f} | "
          f"{held:.3f} ± {se(held, r['num_clips_heldout']):.3f} | {r['a2v_r@1']:.3f} | "
          f"{r['v2a_r@1']:.3f} | {r['a2v_r@5']:.3f} | {r['v2a_r@5']:.3f} |")


if __name__ == "__main__":
  main()
