"""Prints the README's table: Flamingo, OFA and the unified (LLaVA-style) decoder beside the
dedicated heads, each row read from the committed metrics file of its experiment folder (the
last eval record of the run).

  python experiments/multimodal_lms/table.py

Standard errors are binomial, sqrt(p (1 - p) / n), over the n test items; BLEU-4 and CIDEr-D
are corpus scores with no per-item file to bootstrap, so none.
"""
import json
import math
import pathlib

EXPERIMENTS = pathlib.Path(__file__).parent.parent
VQA_QUESTIONS = 1000    # all 5 questions of the first 200 test images (64 px, 1-3 objects)
GROUNDING_IMAGES = 500  # one expression each
CAPTION_IMAGES = 500
SINGLE_OBJECT_64PX = 173  # 1-object images among the first 500 (64 px, 1-3 objects)
SINGLE_OBJECT_32PX = 237  # among the first 500 of configs/caption_shapeworld.py (32 px, 1-2)


def last(folder, name):
  """The last eval record of a metrics .jsonl, or the metrics of an `mmjax eval` .json."""
  text = (EXPERIMENTS / folder / name).read_text()
  if name.endswith(".json"):
    record = json.loads(text)
    return {"step": record["step"], **record["metrics"]}
  return json.loads(text.splitlines()[-1])


def with_se(p, n):
  return f"{p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f}"


# Flamingo's evals: (support, file, shots) (RICES at 0 shots is the random one's 0 shots).
FLAMINGO = [("", "metrics_flamingo.jsonl", (0,)),
            (", random support", "metrics_flamingo.jsonl", (4, 8)),
            (", RICES support", "eval_flamingo_rices_step1500.json", (4, 8)),
            (", retrieval-built training rows", "metrics_flamingo_rices_rows.jsonl", (0,)),
            (", retrieval-built training rows, RICES support",
             "eval_flamingo_rices_rows_rices_step1500.json", (4, 8))]
# (model, vision tower, folder, file, key prefix)
CAPTIONING = [
    ("Captioner (dedicated)", "scratch", "ofa_shapeworld", "metrics_captioner_64px.jsonl", ""),
    ("unified decoder, LLaVA stage 1 (projector only)", "CLIP, frozen", "multimodal_lms",
     "metrics_llava_caption_stage1.jsonl", ""),
    ("unified decoder, LLaVA stage 2 (projector + LM)", "CLIP, frozen", "multimodal_lms",
     "metrics_llava_caption_stage2.jsonl", ""),
    ("OFA, one model for 3 tasks", "scratch", "ofa_shapeworld", "metrics_ofa.jsonl", "caption_"),
    ("OFA, one model, Gaussian bins, every task on each of 64 images a step", "scratch",
     "ofa_shapeworld", "metrics_ofa_every_b64.jsonl", "caption_"),
    ("OFA, the same, grounding loss x 3", "scratch", "ofa_shapeworld",
     "metrics_ofa_every_b64_lambda3.jsonl", "caption_"),
    ("OFA, the same, from its 600-step grounding-only run", "scratch", "ofa_shapeworld",
     "metrics_ofa_every_b64_from_grounding.jsonl", "caption_"),
    ("OFA, one model for 3 tasks", "CLIP, fine-tuned", "ofa_shapeworld",
     "metrics_ofa_clip_init.jsonl", "caption_"),
    ("OFA, one model for 3 tasks, Gaussian bin targets", "CLIP, fine-tuned", "ofa_shapeworld",
     "metrics_ofa_clip_init_bins.jsonl", "caption_"),
    ("OFA, one model for 3 tasks, Gaussian bins, instruction prompt", "CLIP, fine-tuned",
     "ofa_shapeworld", "metrics_ofa_clip_init_prompt.jsonl", "caption_"),
] + [(f"Flamingo, {k} shots{support}", "CLIP, frozen", "flamingo_shapeworld", file,
      f"caption_{k}shot_") for support, file, shots in FLAMINGO for k in shots]
CAPTIONING_32PX = [
    ("Captioner (dedicated)", "scratch", "caption_shapeworld", "metrics.jsonl", ""),
    ("unified decoder", "scratch", "unified_shapeworld", "metrics_caption.jsonl", ""),
]
VQA = [
    ("VQA classifier (dedicated)", "scratch", "vqa_shapeworld",
     "metrics_classifier_default_600steps.jsonl", ""),
    ("VQA classifier (dedicated)", "CLIP, fine-tuned", "vqa_shapeworld",
     "metrics_classifier_clip_init_600steps.jsonl", ""),
    ("unified decoder", "scratch", "unified_shapeworld", "metrics_vqa.jsonl", ""),
    ("unified decoder, LLaVA stage 1 (projector only)", "CLIP, frozen", "multimodal_lms",
     "metrics_llava_vqa_stage1.jsonl", ""),
    ("unified decoder, LLaVA stage 2 (projector + LM)", "CLIP, frozen", "multimodal_lms",
     "metrics_llava_vqa_stage2.jsonl", ""),
    ("OFA, one model for 3 tasks", "scratch", "ofa_shapeworld", "metrics_ofa.jsonl", "vqa_"),
    ("OFA, one model, Gaussian bins, every task on each of 64 images a step", "scratch",
     "ofa_shapeworld", "metrics_ofa_every_b64.jsonl", "vqa_"),
    ("OFA, the same, grounding loss x 3", "scratch", "ofa_shapeworld",
     "metrics_ofa_every_b64_lambda3.jsonl", "vqa_"),
    ("OFA, the same, from its 600-step grounding-only run", "scratch", "ofa_shapeworld",
     "metrics_ofa_every_b64_from_grounding.jsonl", "vqa_"),
    ("OFA, one model for 3 tasks", "CLIP, fine-tuned", "ofa_shapeworld",
     "metrics_ofa_clip_init.jsonl", "vqa_"),
    ("OFA, one model for 3 tasks, Gaussian bin targets", "CLIP, fine-tuned", "ofa_shapeworld",
     "metrics_ofa_clip_init_bins.jsonl", "vqa_"),
    ("OFA, one model for 3 tasks, Gaussian bins, instruction prompt", "CLIP, fine-tuned",
     "ofa_shapeworld", "metrics_ofa_clip_init_prompt.jsonl", "vqa_"),
] + [(f"Flamingo, {k} shots{support}", "CLIP, frozen", "flamingo_shapeworld", file,
      f"vqa_{k}shot_") for support, file, shots in FLAMINGO for k in shots]
GROUNDING = [
    ("regression head (dedicated)", "scratch", "grounding_shapeworld",
     "metrics_regression_600steps.jsonl", ""),
    ("regression head (dedicated)", "CLIP, fine-tuned", "grounding_shapeworld",
     "metrics_regression_clip_init_600steps.jsonl", ""),
    ("Captioner, coordinate tokens (dedicated)", "scratch", "grounding_shapeworld",
     "metrics_tokens_600steps.jsonl", ""),
    ("Captioner, coordinate tokens, Gaussian bin targets (dedicated)", "scratch",
     "grounding_shapeworld", "metrics_tokens_sigma2_600steps.jsonl", ""),
    ("unified decoder, coordinate tokens", "scratch", "unified_shapeworld",
     "metrics_grounding.jsonl", ""),
    ("unified decoder, coordinate tokens, Gaussian bin targets", "scratch", "unified_shapeworld",
     "metrics_grounding_bins.jsonl", ""),
    ("unified decoder, LLaVA stage 1 (projector, location-token rows)", "CLIP, frozen",
     "multimodal_lms", "metrics_llava_grounding_stage1.jsonl", ""),
    ("unified decoder, LLaVA stage 2 (projector + LM)", "CLIP, frozen", "multimodal_lms",
     "metrics_llava_grounding_stage2.jsonl", ""),
    ("OFA, one model for 3 tasks", "scratch", "ofa_shapeworld", "metrics_ofa.jsonl",
     "grounding_"),
    ("OFA, one model, Gaussian bins, every task on each of 64 images a step", "scratch",
     "ofa_shapeworld", "metrics_ofa_every_b64.jsonl", "grounding_"),
    ("OFA, the same, grounding loss x 3", "scratch", "ofa_shapeworld",
     "metrics_ofa_every_b64_lambda3.jsonl", "grounding_"),
    ("OFA, the same, from its 600-step grounding-only run", "scratch", "ofa_shapeworld",
     "metrics_ofa_every_b64_from_grounding.jsonl", "grounding_"),
    ("OFA, one model for 3 tasks", "CLIP, fine-tuned", "ofa_shapeworld",
     "metrics_ofa_clip_init.jsonl", "grounding_"),
    ("OFA, one model for 3 tasks, Gaussian bin targets", "CLIP, fine-tuned", "ofa_shapeworld",
     "metrics_ofa_clip_init_bins.jsonl", "grounding_"),
    ("OFA, one model for 3 tasks, Gaussian bins, instruction prompt", "CLIP, fine-tuned",
     "ofa_shapeworld", "metrics_ofa_clip_init_prompt.jsonl", "grounding_"),
]


def caption_rows(rows, singles):
  for name, vision, folder, file, p in rows:
    r = last(folder, file)
    print(f"| {name} | {vision} | {r['step']} | {r[p + 'bleu4']:.3f} | {r[p + 'cider_d']:.3f} | "
          f"{with_se(r[p + 'shape_accuracy'], singles)} | {r[p + 'colour_accuracy']:.3f} |")


def main():
  header = "| model | vision tower | step | "
  print("### Captioning (64 px, 1-3 objects; first 500 test images)\n")
  print(header + f"BLEU-4 | CIDEr-D | shape acc. ({SINGLE_OBJECT_64PX} 1-object) | colour |")
  print("|---|---|---|---|---|---|---|")
  caption_rows(CAPTIONING, SINGLE_OBJECT_64PX)
  print("\n### Captioning (configs/caption_shapeworld.py's 32 px, 1-2 object scenes)\n")
  print(header + f"BLEU-4 | CIDEr-D | shape acc. ({SINGLE_OBJECT_32PX} 1-object) | colour |")
  print("|---|---|---|---|---|---|---|")
  caption_rows(CAPTIONING_32PX, SINGLE_OBJECT_32PX)
  print(f"\n### VQA (64 px, 1-3 objects; {VQA_QUESTIONS} questions)\n")
  print(header + "accuracy | count | colour | shape | exists |")
  print("|---|---|---|---|---|---|---|---|")
  for name, vision, folder, file, p in VQA:
    r = last(folder, file)
    cells = " | ".join(f"{r[f'{p}accuracy_{t}']:.3f}" for t in ("count", "colour", "shape",
                                                                "exists"))
    print(f"| {name} | {vision} | {r['step']} | {with_se(r[p + 'accuracy'], VQA_QUESTIONS)} | "
          f"{cells} |")
  print(f"\n### Grounding (64 px, 1-3 objects; {GROUNDING_IMAGES} expressions)\n")
  print(header + "acc@0.5 | mean IoU |")
  print("|---|---|---|---|---|")
  for name, vision, folder, file, p in GROUNDING:
    r = last(folder, file)
    print(f"| {name} | {vision} | {r['step']} | {with_se(r[p + 'acc@0.5'], GROUNDING_IMAGES)} | "
          f"{r[p + 'mean_iou']:.3f} |")


if __name__ == "__main__":
  main()
