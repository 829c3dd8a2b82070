"""Prints the README's coordinate-target table from the committed metrics files: the tokens head
(configs/grounding_shapeworld.py:tokens, 600 steps) with one-hot bin targets and with Gaussian
bin targets of width `bin_sigma` 1 and 2 bins, beside the regression head.

  python experiments/grounding_shapeworld/bin_targets_table.py

acc@0.5's standard error is binomial, sqrt(p (1 - p) / n), over the n = 500 test expressions.
"""
import json
import math
import pathlib

HERE = pathlib.Path(__file__).parent
EXPRESSIONS = 500
RUNS = (("regression head", "metrics_regression_600steps.jsonl"),
        ("tokens, one-hot targets (bin_sigma 0)", "metrics_tokens_sigma0_600steps.jsonl"),
        ("tokens, Gaussian targets, bin_sigma 1", "metrics_tokens_sigma1_600steps.jsonl"),
        ("tokens, Gaussian targets, bin_sigma 2", "metrics_tokens_sigma2_600steps.jsonl"))


def main():
  print("| head | acc@0.5 at step 200 / 400 | acc@0.5 at step 600 | acc@0.75 | mean IoU |")
  print("|---|---|---|---|---|")
  for name, file in RUNS:
    rows = {r["step"]: r for r in map(json.loads, open(HERE / file))}
    last = rows[600]
    p = last["acc@0.5"]
    print(f"| {name} | {rows[200]['acc@0.5']:.3f} / {rows[400]['acc@0.5']:.3f} | "
          f"{p:.3f} ± {math.sqrt(p * (1 - p) / EXPRESSIONS):.3f} | {last['acc@0.75']:.3f} | "
          f"{last['mean_iou']:.3f} |")


if __name__ == "__main__":
  main()
