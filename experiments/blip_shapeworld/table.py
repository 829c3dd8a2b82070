"""Prints the BLIP-vs-CLIP table of README.md from the two committed metrics files.

  python experiments/blip_shapeworld/table.py
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def read(path):
  return {r["step"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def row(step, name, r):
  recalls = lambda d: " / ".join(f"{r[f'{d}_r@{k}']:.3f}" for k in (1, 5, 10))
  itm = f"{r['i2t_r@1_itm']:.3f}" if "i2t_r@1_itm" in r else "-"
  caption = f"{r['bleu4']:.3f} / {r['cider_d']:.2f}" if "bleu4" in r else "-"
  return (f"| {step} | {name} | {r['zeroshot_top1']:.3f} / {r['zeroshot_top1_heldout']:.3f} | "
          f"{recalls('i2t')} | {recalls('t2i')} | {itm} | {caption} |")


def main():
  clip = read(ROOT / "experiments/clip_shapeworld/metrics_default_600steps.jsonl")
  blip = read(ROOT / "experiments/blip_shapeworld/metrics.jsonl")
  print("| step | model | zero-shot top-1 (seen / held-out) | i2t R@1 / 5 / 10 | "
        "t2i R@1 / 5 / 10 | i2t R@1 ITM re-ranked | BLEU-4 / CIDEr-D |")
  print("|---|---|---|---|---|---|---|")
  for step in sorted(blip):
    if step in clip:
      print(row(step, "CLIP", clip[step]))
    print(row(step, "BLIP", blip[step]))


if __name__ == "__main__":
  main()
