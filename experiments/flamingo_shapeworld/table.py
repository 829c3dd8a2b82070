"""Prints the README's tables from the committed files of this folder: the two runs Flamingo
starts from (CLIP, the packed LM) and Flamingo's few-shot VQA and captioning, with random
support (the training run's evals, metrics_flamingo.jsonl) and with RICES support (`mmjax
eval` of the last checkpoint, eval_flamingo_rices_step1500.json); the same for the run with
retrieval-built training rows (metrics_flamingo_rices_rows.jsonl,
eval_flamingo_rices_rows_*_step1500.json); and the fast-binding runs
(`configs/flamingo_shapeworld.py:binding`, metrics_flamingo_binding*.jsonl): their binding
accuracy by shots, and their plain VQA and captioning with random support.

  python experiments/flamingo_shapeworld/table.py

Standard errors are binomial, sqrt(p (1 - p) / n), for accuracies over n test items. A
difference of two shot counts is paired (the same questions), its SE clustered by test image,
as `mmjax eval` wrote it (eval_flamingo_{random,rices}_step1500.json; the random one repeats
the training run's last eval exactly). BLEU-4 and CIDEr-D are corpus scores with no per-item file to
bootstrap, so none.
"""
import json
import math
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent / "configs"))

VQA_TYPES = ("count", "colour", "shape", "exists", "relation", "size")


def records(name):
  return [json.loads(line) for line in open(HERE / name)]


# (label, training metrics, `mmjax eval` files stem) of each Flamingo run: random training rows,
# and half the rows retrieval-built (--config.data.rices_rows.fraction=0.5).
RUNS = (("random rows", "metrics_flamingo.jsonl", "eval_flamingo"),
        ("retrieval rows", "metrics_flamingo_rices_rows.jsonl", "eval_flamingo_rices_rows"))
# (label, training metrics, on the default scenes?) of the fast-binding runs: half the rows
# binding rows, the LM frozen (Flamingo's recipe) or trained too (optim.trainable adds
# "transformer"); and the frozen one on 1-object scenes (data.num_objects=(1,1)), whose plain
# VQA and captions are of other scenes than the tables' other rows, so only in the binding table.
BINDING_RUNS = (("binding rows, LM frozen", "metrics_flamingo_binding.jsonl", True),
                ("binding rows, LM trained", "metrics_flamingo_binding_lm.jsonl", True),
                ("binding rows, LM frozen, 1-object scenes",
                 "metrics_flamingo_binding_1object.jsonl", False))
WAYS = 2  # answers per binding episode (data.binding.ways of the :binding config)


def evaluations():
  """(training rows, support, record) of every eval: each run's training evals (random
  support), then its last checkpoint's with RICES support."""
  return [row for label, metrics, stem in RUNS for row in
          [(label, "random", r) for r in records(metrics)] +
          [(label, "RICES", eval_file(stem, "rices"))]] + [
      (label, "random", r) for label, metrics, default_scenes in BINDING_RUNS if default_scenes
      for r in records(metrics)]


def se(p, n):
  return math.sqrt(p * (1 - p) / n)


def with_se(p, n):
  return f"{p:.3f} ± {se(p, n):.3f}"


def eval_sizes():
  """(VQA questions, binding questions, single-object caption images, shots) of the
  Flamingo config."""
  import flamingo_shapeworld
  from mmjax.data.shapeworld_inputs import shapeworld_source
  from mmjax.train.tasks.binding import BINDING_SLOTS
  config = flamingo_shapeworld.get_config()
  ev = config.eval
  source = shapeworld_source(config.data, "test", ev.caption_images)
  singles = sum(int(source[i]["num_objects"]) == 1 for i in range(ev.caption_images))
  return 5 * ev.vqa_images, len(BINDING_SLOTS) * ev.vqa_images, singles, tuple(ev.shots)


def sources_table():
  clip, lm = records("metrics_clip.jsonl")[-1], records("metrics_lm_packed.jsonl")[-1]
  print("| run | step | result |")
  print("|---|---|---|")
  print(f"| CLIP (configs/clip_shapeworld.py), the vision tower | {clip['step']} | zero-shot "
        f"top-1 {clip['zeroshot_top1']:.3f} (seen) / {clip['zeroshot_top1_heldout']:.3f} "
        f"(held out) |")
  print(f"| LM (configs/lm_shapeworld.py:packed), the language model | {lm['step']} | eval "
        f"loss {lm['eval_loss']:.3f} (single texts) / {lm['eval_loss_packed']:.3f} (packed), "
        f"next-token accuracy {lm['token_accuracy']:.3f} / {lm['token_accuracy_packed']:.3f} |")


def vqa_table(questions, shots):
  print(f"| training rows | support | step | shots | accuracy ({questions} questions) | " +
        " | ".join(VQA_TYPES) + " |")
  print("|---|---|---|---|---|" + "---|" * len(VQA_TYPES))
  for rows, support, r in evaluations():
    for k in shots:
      p = f"vqa_{k}shot_"
      cells = " | ".join(f"{r[f'{p}accuracy_{t}']:.3f}" for t in VQA_TYPES)
      print(f"| {rows} | {support} | {r['step']} | {k} | "
            f"{with_se(r[p + 'accuracy'], questions)} | {cells} |")


def caption_table(singles, shots):
  print(f"| training rows | support | step | shots | BLEU-4 | CIDEr-D | shape acc. ({singles} "
        "1-object) | colour | size |")
  print("|---|---|---|---|---|---|---|---|---|")
  for rows, support, r in evaluations():
    for k in shots:
      p = f"caption_{k}shot_"
      print(f"| {rows} | {support} | {r['step']} | {k} | {r[p + 'bleu4']:.3f} | "
            f"{r[p + 'cider_d']:.3f} | "
            f"{with_se(r[p + 'shape_accuracy'], singles)} | {r[p + 'colour_accuracy']:.3f} | "
            f"{r[p + 'size_accuracy']:.3f} |")


def eval_file(stem, support):
  record = json.loads((HERE / f"{stem}_{support}_step1500.json").read_text())
  assert record["eval"]["support_selection"] == support, record["eval"]
  return {"step": record["step"], **record["metrics"]}


def shots_table(questions, shots):
  """Each k-shot VQA accuracy of the last checkpoint minus the 0-shot one on the same
  questions, with its paired SE (`mmjax eval`'s vqa_{k}shot_gain and _gain_se)."""
  print("| training rows | support | shots | VQA accuracy (step 1500) | minus 0-shot (paired SE) "
        "| above 0-shot by 2 SE? | caption BLEU-4 | minus 0-shot |")
  print("|---|---|---|---|---|---|---|---|")
  for (label, _, stem), support in ((run, s) for run in RUNS for s in ("random", "rices")):
    r = eval_file(stem, support)
    for k in shots:
      acc, bleu = r[f"vqa_{k}shot_accuracy"], r[f"caption_{k}shot_bleu4"]
      if k == 0:
        gain_text, verdict = "-", "-"
      else:
        gain, gain_se = r[f"vqa_{k}shot_gain"], r[f"vqa_{k}shot_gain_se"]
        gain_text = f"{gain:+.3f} ± {gain_se:.3f} ({gain / gain_se:+.1f} SE)"
        verdict = "yes" if gain > 2 * gain_se else "no"
      print(f"| {label} | {'RICES' if support == 'rices' else support} | {k} | "
            f"{with_se(acc, questions)} | {gain_text} | {verdict} | {bleu:.3f} | "
            f"{bleu - r['caption_0shot_bleu4']:+.3f} |")


def binding_table(questions, shots):
  """Each binding run's accuracy by shots, against 0 shots (paired SE, `mmjax train`'s
  binding_{k}shot_gain and _gain_se) and against answering with one of the episode's words in
  context at random (1 / WAYS: binomial SE of the accuracy)."""
  print(f"| training rows | step | shots | accuracy ({questions} questions) | colour | shape | "
        "another word of the episode | minus 0-shot (paired SE) | minus 1/2, a word in context "
        "at random | above it by 2 SE? |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for label, metrics, _ in BINDING_RUNS:
    for r in records(metrics):
      for k in shots:
        p = f"binding_{k}shot_"
        acc = r[p + "accuracy"]
        gain = (f"{r[p + 'gain']:+.3f} ± {r[p + 'gain_se']:.3f}" if k else "-")
        over, over_se = acc - 1 / WAYS, se(acc, questions)
        versus = (f"{over:+.3f} ± {over_se:.3f} ({over / over_se:+.1f} SE)" if k else "-")
        verdict = ("yes" if over > 2 * over_se else "no") if k else "-"
        print(f"| {label} | {r['step']} | {k} | {with_se(acc, questions)} | "
              f"{r[p + 'accuracy_colour']:.3f} | {r[p + 'accuracy_shape']:.3f} | "
              f"{r[p + 'other_word']:.3f} | {gain} | {versus} | {verdict} |")


def main():
  questions, binding, singles, shots = eval_sizes()
  for title, table in [("The runs Flamingo starts from", sources_table),
                       ("Few-shot VQA", lambda: vqa_table(questions, shots)),
                       ("Few-shot captioning", lambda: caption_table(singles, shots)),
                       ("Shots against 0 shots", lambda: shots_table(questions, shots)),
                       ("Fast binding", lambda: binding_table(binding, shots))]:
    print(f"### {title}\n")
    table()
    print()


if __name__ == "__main__":
  main()
