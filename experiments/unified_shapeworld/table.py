"""Prints the README's tables from the committed metrics files: the unified decoder's runs (this
folder) beside the Captioner-headed runs of the same configs (experiments/caption_shapeworld,
vqa_shapeworld, grounding_shapeworld).

  python experiments/unified_shapeworld/table.py

Standard errors are binomial, sqrt(p (1 - p) / n), for accuracies over n independent test
items; BLEU-4 and CIDEr-D are corpus scores with no per-item file to bootstrap, so none.
"""
import json
import math
import pathlib

HERE = pathlib.Path(__file__).parent
EXPERIMENTS = HERE.parent
SINGLE_OBJECT_IMAGES = 237  # of the 500 caption eval images (experiments/caption_shapeworld)
VQA_QUESTIONS = 1000        # all 5 questions of the first 200 test images
GROUNDING_IMAGES = 500      # one expression each


def records(path):
  return [json.loads(line) for line in open(path)]


def with_se(p, n):
  return f"{p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f}"


def caption_table():
  print("| model | step | eval loss | BLEU-4 | CIDEr-D | shape acc. (237 1-object) | colour | "
        "size |")
  print("|---|---|---|---|---|---|---|---|")
  for name, path in [("Captioner (cross-attention)", EXPERIMENTS / "caption_shapeworld" /
                      "metrics.jsonl"),
                     ("unified decoder", HERE / "metrics_caption.jsonl")]:
    for r in records(path):
      print(f"| {name} | {r['step']} | {r['eval_loss']:.3f} | {r['bleu4']:.3f} | "
            f"{r['cider_d']:.3f} | {with_se(r['shape_accuracy'], SINGLE_OBJECT_IMAGES)} | "
            f"{r['colour_accuracy']:.3f} | {r['size_accuracy']:.3f} |")


def vqa_table():
  types = ("count", "colour", "shape", "exists", "relation", "size")
  print("| model | step | accuracy (1000 questions) | " + " | ".join(types) + " |")
  print("|---|---|---|" + "---|" * len(types))
  for name, path in [("Captioner, generative (step 100 of a 400-step run)",
                      EXPERIMENTS / "vqa_shapeworld" / "metrics_generative_step100_of_400.jsonl"),
                     ("VQA classifier head", EXPERIMENTS / "vqa_shapeworld" /
                      "metrics_classifier_default_600steps.jsonl"),
                     ("unified decoder, generative", HERE / "metrics_vqa.jsonl")]:
    for r in records(path):
      cells = " | ".join(f"{r[f'accuracy_{t}']:.3f}" for t in types)
      print(f"| {name} | {r['step']} | {with_se(r['accuracy'], VQA_QUESTIONS)} | {cells} |")


def grounding_table():
  print("| model | step | acc@0.5 (500 images) | acc@0.75 | mean IoU |")
  print("|---|---|---|---|---|")
  for name, path in [("Captioner, coordinate tokens", EXPERIMENTS / "grounding_shapeworld" /
                      "metrics_tokens_600steps.jsonl"),
                     ("unified decoder, coordinate tokens", HERE / "metrics_grounding.jsonl"),
                     # Both again with Gaussian bin targets (bin_sigma 2, the default now).
                     ("Captioner, coordinate tokens, Gaussian bin targets",
                      EXPERIMENTS / "grounding_shapeworld" /
                      "metrics_tokens_sigma2_600steps.jsonl"),
                     ("unified decoder, coordinate tokens, Gaussian bin targets",
                      HERE / "metrics_grounding_bins.jsonl")]:
    for r in records(path):
      print(f"| {name} | {r['step']} | {with_se(r['acc@0.5'], GROUNDING_IMAGES)} | "
            f"{r['acc@0.75']:.3f} | {r['mean_iou']:.3f} |")


def main():
  for title, table in [("Captioning", caption_table), ("VQA", vqa_table),
                       ("Grounding", grounding_table)]:
    print(f"### {title}\n")
    table()
    print()


if __name__ == "__main__":
  main()
