"""Grounding acc@0.5 of OFA runs split by the number of objects in the test scene.

  python experiments/ofa_shapeworld/grounding_by_objects.py \
      runs/ofa_grounding_b64 runs/ofa_grounding_b32 ... \
      --out experiments/ofa_shapeworld/grounding_by_objects.json

Runs already in the --out file keep their entries; the runs named replace theirs.

Each run's own grounding eval set (the first `eval.num_expressions` test images, one expression
each) is decoded greedily over the bins, as its eval does. A 1-object scene needs no reading of
the expression: the box of the only object is right. A model that fails there has not learned
to localise at all, whatever it knows of the words.
"""
import argparse
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from mmjax.data.shapeworld_inputs import shapeworld_source
from mmjax.metrics.boxes import matched_box_iou
from mmjax.train.config import load_run_config
from mmjax.train.restore import restore_params


def by_objects(workdir: pathlib.Path) -> dict:
  run = restore_params(load_run_config(workdir), workdir, read_only=True)
  task = run.task
  data = task._eval_data()
  num = len(data["box"])
  source = shapeworld_source(task.config.data, "test", num)
  objects = np.array([int(source[i]["num_objects"]) for i in range(num)])
  boxes = task._predict_boxes(run.params, {
      "image": jnp.asarray(data["image"][:num]),
      "instruction": jnp.asarray(data["grounding_instruction"])})
  hit = np.asarray(matched_box_iou(jnp.asarray(boxes), jnp.asarray(data["box"]))) >= 0.5
  out = {"workdir": workdir.name, "step": run.step, "acc@0.5": float(hit.mean())}
  for n in np.unique(objects):
    out[f"acc@0.5_{n}_objects"] = float(hit[objects == n].mean())
    out[f"num_{n}_objects"] = int((objects == n).sum())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", type=pathlib.Path, help="OFA runs' workdirs")
  parser.add_argument("--out", type=pathlib.Path, required=True)
  args = parser.parse_args()
  # Runs already in --out stay (their workdirs may be gone); the named runs replace theirs.
  result = json.loads(args.out.read_text()) if args.out.exists() else {}
  result.update({w.name: by_objects(w) for w in args.workdirs})
  args.out.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
