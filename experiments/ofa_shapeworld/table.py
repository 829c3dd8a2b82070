"""Prints the README's tables from the committed metrics files: the one OFA model (this folder)
on each task beside that task's dedicated heads.

  python experiments/ofa_shapeworld/table.py

Dedicated heads: the Captioner on OFA's 64 px, 1-3 object scenes (this folder,
metrics_captioner_64px.jsonl), the VQA classifier (experiments/vqa_shapeworld) and both
grounding heads (experiments/grounding_shapeworld), from scratch and, where such a run exists,
with the ViT warm-started from the CLIP run (as the second OFA run, metrics_ofa_clip_init). Standard errors are binomial,
sqrt(p (1 - p) / n), for accuracies over n independent test items; a difference's is the two
combined. BLEU-4 and CIDEr-D are corpus scores with no per-item file to bootstrap, so none.
"""
import json
import math
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
EXPERIMENTS = HERE.parent
sys.path.insert(0, str(EXPERIMENTS.parent / "configs"))

VQA_QUESTIONS = 1000   # all 5 questions of the first 200 test images
GROUNDING_IMAGES = 500  # one expression each
CAPTION_IMAGES = 500
VQA_TYPES = ("count", "colour", "shape", "exists", "relation", "size")


def records(path):
  return [json.loads(line) for line in open(path)]


def se(p, n):
  return math.sqrt(p * (1 - p) / n)


def with_se(p, n):
  return f"{p:.3f} ± {se(p, n):.3f}"


def single_object_images():
  """How many of the caption eval images hold one object (shape accuracy's n)."""
  import ofa_shapeworld
  from mmjax.data.shapeworld_inputs import shapeworld_source
  source = shapeworld_source(ofa_shapeworld.get_config().data, "test", CAPTION_IMAGES)
  return sum(int(source[i]["num_objects"]) == 1 for i in range(CAPTION_IMAGES))


OFA = HERE / "metrics_ofa.jsonl"
OFA_CLIP = HERE / "metrics_ofa_clip_init.jsonl"  # the same, its ViT warm-started from CLIP
# The same again, with Gaussian targets for the location bins (bin_sigma 2, the default now).
OFA_CLIP_BINS = HERE / "metrics_ofa_clip_init_bins.jsonl"
# And with the instruction also as the decoder's prompt (prompt_type "prev_output").
OFA_CLIP_PROMPT = HERE / "metrics_ofa_clip_init_prompt.jsonl"
# And trained on grounding alone (tasks.caption=0, tasks.vqa=0; 600 steps of 96 grounding rows).
OFA_CLIP_GROUNDING_ONLY = HERE / "metrics_ofa_clip_init_grounding_only.jsonl"
# The Gaussian-bins run with 64 images a step, 2 rows each (batch_size=64, rows_per_image=2).
OFA_CLIP_B64 = HERE / "metrics_ofa_clip_init_b64x2.jsonl"
B64_NAME = "OFA, one model, CLIP-initialised ViT, Gaussian bins, 64 images x 2 rows"
# From scratch, Gaussian bins, 64 images a step each with one row of every task
# (batch_size=64, data.row_tasks=every: 64 caption, 64 VQA and 64 grounding rows a step).
OFA_EVERY = HERE / "metrics_ofa_every_b64.jsonl"
EVERY_NAME = "OFA, one model, Gaussian bins, every task on each of 64 images a step"
# The same, started from all of OFA's 600-step grounding-only run (ofa_grounding_b64; the
# curriculum: localise first, then every task).
OFA_EVERY_FROM_GROUNDING = HERE / "metrics_ofa_every_b64_from_grounding.jsonl"
FROM_GROUNDING_NAME = EVERY_NAME + ", from its grounding-only run"
# The every-task run from scratch with the grounding loss weighted 3 (loss_weights.grounding).
OFA_EVERY_LAMBDA3 = HERE / "metrics_ofa_every_b64_lambda3.jsonl"
LAMBDA3_NAME = EVERY_NAME + ", grounding loss x 3"
VQA_CLASSIFIER_CLIP = EXPERIMENTS / "vqa_shapeworld" / "metrics_classifier_clip_init_600steps.jsonl"
VQA_CLASSIFIER_CLIP_2000 = (EXPERIMENTS / "vqa_shapeworld" /
                            "metrics_classifier_clip_init_2000steps.jsonl")
GROUNDING_CLIP = EXPERIMENTS / "grounding_shapeworld" / "metrics_regression_clip_init_600steps.jsonl"
CAPTIONER = HERE / "metrics_captioner_64px.jsonl"
VQA_CLASSIFIER = EXPERIMENTS / "vqa_shapeworld" / "metrics_classifier_default_600steps.jsonl"
GROUNDING = {"regression head": EXPERIMENTS / "grounding_shapeworld" /
             "metrics_regression_600steps.jsonl",
             "coordinate tokens (Captioner)": EXPERIMENTS / "grounding_shapeworld" /
             "metrics_tokens_600steps.jsonl",
             "coordinate tokens (Captioner), Gaussian bins": EXPERIMENTS /
             "grounding_shapeworld" / "metrics_tokens_sigma2_600steps.jsonl"}


def caption_table(singles):
  print(f"| model | step | BLEU-4 | CIDEr-D | shape acc. ({singles} 1-object) | colour | size |")
  print("|---|---|---|---|---|---|---|")
  rows = [("Captioner (64 px, 1-3 objects)", r, "") for r in records(CAPTIONER)]
  rows += [("OFA, one model", r, "caption_") for r in records(OFA)]
  rows += [("OFA, one model, CLIP-initialised ViT", r, "caption_") for r in records(OFA_CLIP)]
  rows += [("OFA, one model, CLIP-initialised ViT, Gaussian bins", r, "caption_")
           for r in records(OFA_CLIP_BINS)]
  rows += [("OFA, one model, CLIP-initialised ViT, Gaussian bins, instruction prompt", r,
            "caption_") for r in records(OFA_CLIP_PROMPT)]
  rows += [(B64_NAME, r, "caption_") for r in records(OFA_CLIP_B64)]
  rows += [(EVERY_NAME, r, "caption_") for r in records(OFA_EVERY)]
  rows += [(LAMBDA3_NAME, r, "caption_") for r in records(OFA_EVERY_LAMBDA3)]
  rows += [(FROM_GROUNDING_NAME, r, "caption_") for r in records(OFA_EVERY_FROM_GROUNDING)]
  for name, r, p in rows:
    print(f"| {name} | {r['step']} | {r[p + 'bleu4']:.3f} | {r[p + 'cider_d']:.3f} | "
          f"{with_se(r[p + 'shape_accuracy'], singles)} | {r[p + 'colour_accuracy']:.3f} | "
          f"{r[p + 'size_accuracy']:.3f} |")


def vqa_table():
  print(f"| model | step | accuracy ({VQA_QUESTIONS} questions) | " + " | ".join(VQA_TYPES) +
        " |")
  print("|---|---|---|" + "---|" * len(VQA_TYPES))
  rows = [("VQA classifier head", r, "") for r in records(VQA_CLASSIFIER)]
  rows += [("VQA classifier head, CLIP-initialised ViT", r, "")
           for r in records(VQA_CLASSIFIER_CLIP)]
  rows += [("OFA, one model", r, "vqa_") for r in records(OFA)]
  rows += [("OFA, one model, CLIP-initialised ViT", r, "vqa_") for r in records(OFA_CLIP)]
  rows += [("OFA, one model, CLIP-initialised ViT, Gaussian bins", r, "vqa_")
           for r in records(OFA_CLIP_BINS)]
  rows += [("OFA, one model, CLIP-initialised ViT, Gaussian bins, instruction prompt", r,
            "vqa_") for r in records(OFA_CLIP_PROMPT)]
  rows += [(B64_NAME, r, "vqa_") for r in records(OFA_CLIP_B64)]
  rows += [(EVERY_NAME, r, "vqa_") for r in records(OFA_EVERY)]
  rows += [(LAMBDA3_NAME, r, "vqa_") for r in records(OFA_EVERY_LAMBDA3)]
  rows += [(FROM_GROUNDING_NAME, r, "vqa_") for r in records(OFA_EVERY_FROM_GROUNDING)]
  for name, r, p in rows:
    cells = " | ".join(f"{r[f'{p}accuracy_{t}']:.3f}" for t in VQA_TYPES)
    print(f"| {name} | {r['step']} | {with_se(r[p + 'accuracy'], VQA_QUESTIONS)} | {cells} |")


def grounding_table():
  print(f"| model | step | acc@0.5 ({GROUNDING_IMAGES} images) | acc@0.75 | mean IoU |")
  print("|---|---|---|---|---|")
  rows = [(name, r, "") for name, path in GROUNDING.items() for r in records(path)]
  rows += [("regression head, CLIP-initialised ViT", r, "") for r in records(GROUNDING_CLIP)]
  rows += [("OFA, one model", r, "grounding_") for r in records(OFA)]
  rows += [("OFA, one model, CLIP-initialised ViT", r, "grounding_")
           for r in records(OFA_CLIP)]
  rows += [("OFA, one model, CLIP-initialised ViT, Gaussian bins", r, "grounding_")
           for r in records(OFA_CLIP_BINS)]
  rows += [("OFA, one model, CLIP-initialised ViT, Gaussian bins, instruction prompt", r,
            "grounding_") for r in records(OFA_CLIP_PROMPT)]
  rows += [(B64_NAME, r, "grounding_") for r in records(OFA_CLIP_B64)]
  rows += [(EVERY_NAME, r, "grounding_") for r in records(OFA_EVERY)]
  rows += [(LAMBDA3_NAME, r, "grounding_") for r in records(OFA_EVERY_LAMBDA3)]
  rows += [(FROM_GROUNDING_NAME, r, "grounding_") for r in records(OFA_EVERY_FROM_GROUNDING)]
  rows += [("OFA trained on grounding alone, CLIP-initialised ViT, Gaussian bins", r,
            "grounding_") for r in records(OFA_CLIP_GROUNDING_ONLY)]
  for name, r, p in rows:
    print(f"| {name} | {r['step']} | {with_se(r[p + 'acc@0.5'], GROUNDING_IMAGES)} | "
          f"{r[p + 'acc@0.75']:.3f} | {r[p + 'mean_iou']:.3f} |")


# OFA trained on grounding alone for 600 steps, varying one thing at a time (the first is the
# reference): images per step x rows per image, the ViT's start, the encoder's depth and the
# image positions, each read from the run's config.
GROUNDING_SWEEP = ("grounding_b64", "grounding_b32", "grounding_b32x3", "grounding_b32x3_sincos",
                   "grounding_b64_no_encoder", "grounding_b64_clip_init",
                   "grounding_b64_clip_frozen")
BY_OBJECTS = HERE / "grounding_by_objects.json"


def grounding_sweep_table():
  by_objects = json.loads(BY_OBJECTS.read_text())
  print("| run | images / step x rows / image | ViT start | encoder layers | image positions | "
        "acc@0.5 | 1 object | 2 objects | 3 objects | mean IoU | last train loss |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for name in GROUNDING_SWEEP:
    config = json.loads((HERE / f"config_ofa_{name}.json").read_text())
    last = records(HERE / f"metrics_ofa_{name}.jsonl")[-1]
    loss = [r["loss"] for r in records(HERE / f"train_ofa_{name}.jsonl") if "loss" in r][-4:]
    split = by_objects[f"ofa_{name}"]
    if abs(split["acc@0.5"] - last["grounding_acc@0.5"]) > 1e-6:
      raise ValueError(f"{BY_OBJECTS.name} does not hold the last eval of {name}")
    start = "CLIP" if config["init_from"]["workdir"] else "scratch"
    trainable = config["optim"].get("trainable") or []
    if trainable and "vision_encoder" not in trainable:
      start += ", frozen"
    cells = " | ".join(with_se(split[f"acc@0.5_{n}_objects"], split[f"num_{n}_objects"])
                       for n in (1, 2, 3))
    print(f"| {name} | {config['batch_size']} x {config['data']['rows_per_image']} | {start} | "
          f"{config['model']['encoder_layers']} | "
          f"{config['model'].get('image_position_embedding', 'learned')} | "
          f"{with_se(last['grounding_acc@0.5'], GROUNDING_IMAGES)} | {cells} | "
          f"{last['grounding_mean_iou']:.3f} | {sum(loss) / len(loss):.3f} |")


def gap_table(singles, ofa_path=OFA, clip=False):
  """OFA's last eval minus each dedicated head's last, against the 0.05 target. With `clip`,
  the CLIP-initialised OFA against the CLIP-initialised heads where one was run."""
  ofa = records(ofa_path)[-1]
  print("| task: metric | dedicated head (step) | dedicated | OFA (step "
        f"{ofa['step']}) | OFA - dedicated | within 0.05? |")
  print("|---|---|---|---|---|---|")
  vqa_head = ("classifier, CLIP-initialised", VQA_CLASSIFIER_CLIP) if clip else (
      "classifier", VQA_CLASSIFIER)
  rows = [("captioning: BLEU-4", "Captioner", records(CAPTIONER)[-1], "bleu4", "caption_", None),
          ("captioning: shape acc.", "Captioner", records(CAPTIONER)[-1], "shape_accuracy",
           "caption_", singles),
          ("VQA: accuracy", vqa_head[0], records(vqa_head[1])[-1], "accuracy", "vqa_",
           VQA_QUESTIONS)]
  if clip:  # the CLIP-initialised classifier after as many steps as OFA (of a longer run)
    longer = [r for r in records(VQA_CLASSIFIER_CLIP_2000) if r["step"] == ofa["step"]]
    rows += [("VQA: accuracy", "classifier, CLIP-initialised, of a 2000-step run", longer[0],
              "accuracy", "vqa_", VQA_QUESTIONS)]
  grounding = dict(GROUNDING)
  if clip:
    grounding["regression head, CLIP-initialised"] = GROUNDING_CLIP
  rows += [("grounding: acc@0.5", name, records(path)[-1], "acc@0.5", "grounding_",
            GROUNDING_IMAGES) for name, path in grounding.items()]
  for task, name, head, key, prefix, n in rows:
    mine, theirs = ofa[prefix + key], head[key]
    gap = mine - theirs
    verdict = "yes" if gap > -0.05 else "no"
    if n is None:
      gap_text = f"{gap:+.3f}"
    else:
      gap_se = math.sqrt(se(mine, n) ** 2 + se(theirs, n) ** 2)
      gap_text = f"{gap:+.3f} ± {gap_se:.3f}"
      verdict += f" ({(gap + 0.05) / gap_se:+.1f} SE from the bar)"
    print(f"| {task} | {name} ({head['step']}) | {theirs:.3f} | {mine:.3f} | {gap_text} | "
          f"{verdict} |")


def main():
  singles = single_object_images()
  for title, table in [("Captioning", lambda: caption_table(singles)), ("VQA", vqa_table),
                       ("Grounding", grounding_table),
                       ("OFA trained on grounding alone: what it needs", grounding_sweep_table),
                       ("OFA against the dedicated heads", lambda: gap_table(singles)),
                       ("OFA with a CLIP-initialised ViT against the dedicated heads",
                        lambda: gap_table(singles, OFA_CLIP, clip=True)),
                       ("OFA with a CLIP-initialised ViT and Gaussian bins against the "
                        "dedicated heads", lambda: gap_table(singles, OFA_CLIP_BINS, clip=True)),
                       ("OFA with every task on each of 64 images a step against the dedicated "
                        "heads", lambda: gap_table(singles, OFA_EVERY)),
                       ("The same with the grounding loss x 3 against the dedicated heads",
                        lambda: gap_table(singles, OFA_EVERY_LAMBDA3)),
                       ("The same from its grounding-only run against the dedicated heads",
                        lambda: gap_table(singles, OFA_EVERY_FROM_GROUNDING))]:
    print(f"### {title}\n")
    table()
    print()


if __name__ == "__main__":
  main()
