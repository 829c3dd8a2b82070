"""Tables and the accuracy-vs-wall-time curve from judge.py's judge.jsonl.

  python experiments/t2i_shapeworld/curve.py experiments/t2i_shapeworld/judge.jsonl \
      [--guidance 3] [--out experiments/t2i_shapeworld/accuracy_vs_wall.png]

Prints two markdown tables: every checkpoint judged at `--guidance` (the curve), and every
guidance judged at one checkpoint (the CFG sweep: the checkpoint with the most guidances).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import matplotlib


def _row(r: dict) -> str:
  wall = "?" if r["train_wall_s"] is None else f"{r['train_wall_s'] / 60:.1f}"
  return (f"| {r['diffusion_step']} | {wall} | {r['guidance']:g} | "
          f"{r['prompt_accuracy']:.3f} +- {r['prompt_accuracy_se']:.3f} | "
          f"{r['prompt_colour_accuracy']:.3f} | {r['prompt_shape_accuracy']:.3f} | "
          f"{r.get('prompt_accuracy_heldout', float('nan')):.3f} | {r['fid_clip']:.3f} "
          f"({r['fid_clip_real_vs_real']:.3f}) |")


HEADER = ("| step | train wall (min) | guidance | prompt accuracy +- SE | colour | shape | "
          "held-out accuracy | FID-CLIP (real vs real) |\n|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("jsonl")
  parser.add_argument("--guidance", type=float, default=3.0)
  parser.add_argument("--out", default=None, help="curve PNG (default: beside the jsonl)")
  args = parser.parse_args(argv)
  path = pathlib.Path(args.jsonl)
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  if not rows:
    sys.exit(f"{path} has no rows: run judge.py first")
  # A (step, guidance) judged twice: the later row counts.
  latest = {(r["diffusion_step"], r["guidance"]): r for r in rows}
  curve = sorted((r for (_, g), r in latest.items() if g == args.guidance),
                 key=lambda r: r["diffusion_step"])
  print(f"Checkpoints at guidance {args.guidance:g}:\n{HEADER}")
  print("\n".join(_row(r) for r in curve))
  by_step = {}
  for (step, _), r in latest.items():
    by_step.setdefault(step, []).append(r)
  sweep_step = max(by_step, key=lambda s: (len(by_step[s]), s))
  if len(by_step[sweep_step]) > 1:
    print(f"\nGuidance sweep at step {sweep_step}:\n{HEADER}")
    print("\n".join(_row(r) for r in sorted(by_step[sweep_step], key=lambda r: r["guidance"])))
  ceiling = rows[-1]["judge_on_real_accuracy"]
  print(f"\nJudge on real images (the ceiling): {ceiling:.3f}")

  curve = [r for r in curve if r["train_wall_s"] is not None]
  if curve:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    minutes = [r["train_wall_s"] / 60 for r in curve]
    ax.errorbar(minutes, [r["prompt_accuracy"] for r in curve],
                yerr=[r["prompt_accuracy_se"] for r in curve], marker="o", capsize=3,
                label=f"prompt accuracy (guidance {args.guidance:g})")
    ax.axhline(0.8, color="grey", linestyle="--", label="target 0.80")
    ax.axhline(ceiling, color="green", linestyle=":", label="judge on real images")
    ax.set_xlabel("training wall time on 2 CPU cores (min)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(args.out) if args.out else path.with_name("accuracy_vs_wall.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
