"""Splits zero-shot errors of a trained CLIP run into colour and shape errors.

  python experiments/clip_shapeworld/zero_shot_breakdown.py runs/clip [STEP]

Restores the checkpoint (latest unless STEP), runs the contrastive task's own zero-shot
evaluation inputs, and prints top-1, the accuracy of the predicted class's colour and of its
shape, and top-1 per prompt template.
"""
import json
import pathlib
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.data import shapeworld
from mmjax.train.trainer import restore_params


def main(workdir: str, step: int | None = None) -> None:
  workdir = pathlib.Path(workdir)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  run = restore_params(config, workdir, step=step)
  step, task, params, mesh = run.step, run.task, run.params, run.mesh
  zero_shot = task.zero_shot_embeddings(params, mesh)
  prompt_emb, class_emb = zero_shot["prompt_emb"], zero_shot["class_emb"]
  image_emb, labels = zero_shot["image_emb"], zero_shot["labels"]
  pred = np.asarray(jnp.argmax(image_emb @ class_emb.T, -1))
  shapes = len(shapeworld.SHAPES)
  print(f"step {step}: top1 over all 48 classes {np.mean(pred == labels):.3f}  "
        f"colour acc {np.mean(pred // shapes == labels // shapes):.3f}  "
        f"shape acc {np.mean(pred % shapes == labels % shapes):.3f}")
  for t, template in enumerate(shapeworld.ZERO_SHOT_TEMPLATES):
    pred_t = np.asarray(jnp.argmax(image_emb @ prompt_emb[:, t].T, -1))
    print(f"  template {template!r}: top1 {np.mean(pred_t == labels):.3f}")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
