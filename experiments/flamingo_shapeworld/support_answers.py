"""How much a VQA query's RICES support tells about its answer, without any model: the share of
test questions whose answer equals the answer of the nearest support image asked the same
question slot, and the share the majority answer of the k nearest gets right.

  python experiments/flamingo_shapeworld/support_answers.py --workdir runs/flamingo \
      --out experiments/flamingo_shapeworld/support_answers.json

The support is the evaluation's own (`InterleavedTask.select_support`: the frozen vision
tower's nearest train images among `eval.support_images`), for all 5 questions of the first
`eval.vqa_images` test images. Copying is what retrieval-built support offers a model that
reads it; compared with the model's 0-shot accuracy, it bounds what the shots can add.
"""
import argparse
import collections
import json
import pathlib

import numpy as np

from mmjax.train.config import apply_overrides, load_run_config
from mmjax.train.restore import restore_params
from mmjax.train.tasks.vqa import QUESTION_TYPES, QUESTIONS_PER_IMAGE, question_type


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", type=pathlib.Path, required=True, help="a Flamingo run")
  parser.add_argument("--shots", default="1,2,4,8")
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  config = apply_overrides(load_run_config(args.workdir), ["eval.support_selection=rices"])
  run = restore_params(config, args.workdir, read_only=True)
  task = run.task
  task.select_support(run.params, run.mesh)
  ev = config.eval
  train, test = task._eval_sources()
  shots = [int(k) for k in args.shots.split(",")]
  hits = {k: [] for k in shots}
  types = []
  for index in range(ev.vqa_images):
    query = test[index]
    support = [train[int(i)] for i in task._neighbours[index]]   # nearest first
    for slot in range(QUESTIONS_PER_IMAGE):
      types.append(question_type(slot, query["questions"][slot]))
      for k in shots:
        votes = collections.Counter(item["answers"][slot] for item in support[:k])
        top = max(votes.values())
        # Ties go to the nearest of the tied answers.
        guess = next(item["answers"][slot] for item in support[:k]
                     if votes[item["answers"][slot]] == top)
        hits[k].append(guess == query["answers"][slot])
  types = np.asarray(types)
  out = {"workdir": args.workdir.name, "step": run.step, "num_questions": len(types)}
  for k in shots:
    correct = np.asarray(hits[k], np.float64)
    out[f"majority_of_{k}_accuracy"] = float(correct.mean())
    for t, name in enumerate(QUESTION_TYPES):
      if (types == t).any():
        out[f"majority_of_{k}_accuracy_{name}"] = float(correct[types == t].mean())
  args.out.write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
