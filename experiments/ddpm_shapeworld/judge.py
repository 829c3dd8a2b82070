"""Judges a trained text-to-image diffusion run with a trained ShapeWorld CLIP run.

  python experiments/ddpm_shapeworld/judge.py --diffusion runs/ddpm --clip runs/clip \
      [--per-prompt 4] [--steps 20] [--guidance 3] [--sampler dpmpp_2m] [--out DIR]

For every (colour, shape) class and both sizes, the prompt "a {size} {colour} {shape}." is
sampled `--per-prompt` times. Each sample is upsampled (bilinear) to the CLIP run's image size
and classified zero-shot over the 48 classes with the CLIP task's own class embeddings (prompt
templates averaged). Reported:

- prompt_accuracy: the judged class is the prompted one (colour and shape both right), plus
  prompt_colour_accuracy and prompt_shape_accuracy, each also for the held-out classes
  (suffix _heldout; the diffusion model never saw a held-out (colour, shape) pair in training);
- judge_on_real_accuracy (and colour, shape, held-out): the same judge on as many real single-object test images rendered at
  the diffusion run's size and upsampled the same way: the ceiling of what the judge can
  confirm at this resolution;
- fid_clip / fid_clip_real_vs_real: Frechet distance (mmjax.metrics.fid_from_features) in the
  judge's normalised image-embedding space, samples vs real test images, and real vs a disjoint
  real set of the same size (the noise floor). This is not the Inception FID: no Inception
  weights are downloaded here, so the judge's own features stand in.

Writes `judge.json` and `samples_by_class.png` (one row per class, train-split classes first)
to `--out` (default: the diffusion workdir).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np

from mmjax import metrics
from mmjax.data import shapeworld
from mmjax.train.plots import save_image_grid
from mmjax.train.trainer import restore_params

SIZES = ("large", "small")


def _load(workdir: pathlib.Path):
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  return restore_params(config, workdir)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
  if images.shape[1] == size:
    return images
  return np.asarray(jax.image.resize(images, (len(images), size, size, 3), "bilinear"))


def _judge(clip, class_emb, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Images `[N, h, w, 3]` in [0, 1] -> (predicted class `[N]`, normalised embeddings `[N, E]`)."""
  size = clip.task.config.data.image_size
  emb = np.asarray(clip.task.embed_images(clip.params, _upsample(images, size), clip.mesh))
  return (emb @ class_emb.T).argmax(-1), emb


def _real_images(size: int, count: int, start: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` single-object test images of `size` px from index `start`, and their classes."""
  source = shapeworld.ShapeWorld(split="test", length=start + count, seed=0, image_size=size,
                                 num_objects=(1, 1))
  items = [source[i] for i in range(start, start + count)]
  images = np.stack([item["image"] for item in items]).astype(np.float32) / 255
  return images, np.array([item["label"] for item in items])


def _accuracies(pred: np.ndarray, target: np.ndarray, prefix: str) -> dict[str, float]:
  """{prefix}accuracy (class), {prefix}colour_accuracy, {prefix}shape_accuracy, each for the
  train-split classes and, with suffix _heldout, for the held-out ones."""
  shapes = len(shapeworld.SHAPES)
  heldout = shapeworld.heldout_mask()[target]
  out = {}
  for suffix, rows in (("", ~heldout), ("_heldout", heldout)):
    if rows.any():
      p, t = pred[rows], target[rows]
      out[f"{prefix}accuracy{suffix}"] = float(np.mean(p == t))
      out[f"{prefix}colour_accuracy{suffix}"] = float(np.mean(p // shapes == t // shapes))
      out[f"{prefix}shape_accuracy{suffix}"] = float(np.mean(p % shapes == t % shapes))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--diffusion", required=True, help="workdir of a trained diffusion run")
  parser.add_argument("--clip", required=True, help="workdir of a trained contrastive run")
  parser.add_argument("--per-prompt", type=int, default=4)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--guidance", type=float, default=3.0)
  parser.add_argument("--sampler", default="dpmpp_2m")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="output folder (default: --diffusion)")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out or args.diffusion)

  clip = _load(pathlib.Path(args.clip))
  if clip.task.config.task != "contrastive":
    sys.exit(f"--clip must be a contrastive run, got task {clip.task.config.task!r}")
  ddpm = _load(pathlib.Path(args.diffusion))
  class_emb = np.asarray(clip.task.zero_shot_embeddings(clip.params, clip.mesh)["class_emb"])
  names = shapeworld.class_names()
  prompts = [f"a {size} {name}." for name in names for size in SIZES]
  targets = np.repeat(np.arange(len(names)), len(SIZES) * args.per_prompt)

  start = time.perf_counter()
  samples = []
  chunk = 16  # prompts per sampler call (fixed shapes: one compilation)
  for first in range(0, len(prompts), chunk):
    samples.append(ddpm.task.sample(ddpm.params, prompts[first:first + chunk],
                                    num_samples=args.per_prompt, steps=args.steps,
                                    guidance=args.guidance, sampler=args.sampler,
                                    seed=args.seed + first))
  samples = np.concatenate(samples)
  sample_seconds = time.perf_counter() - start

  pred, sample_emb = _judge(clip, class_emb, samples)
  size = ddpm.task.config.data.image_size
  real, real_labels = _real_images(size, 2 * len(samples), start=0)
  real_pred, real_emb = _judge(clip, class_emb, real)
  half = len(samples)
  results = dict(
      diffusion_workdir=str(args.diffusion), diffusion_step=ddpm.step, clip_workdir=str(args.clip),
      clip_step=clip.step, samples=len(samples), per_prompt=args.per_prompt, steps=args.steps,
      guidance=args.guidance, sampler=args.sampler, sample_seconds=round(sample_seconds, 1),
      **_accuracies(pred, targets, "prompt_"),
      **_accuracies(real_pred, real_labels, "judge_on_real_"),
      fid_clip=metrics.fid_from_features(sample_emb, real_emb[:half]),
      fid_clip_real_vs_real=metrics.fid_from_features(real_emb[half:], real_emb[:half]))
  out.mkdir(parents=True, exist_ok=True)
  (out / "judge.json").write_text(json.dumps(results, indent=1) + "\n")
  order = np.argsort(shapeworld.heldout_mask(), kind="stable")  # train-split classes first
  per_class = len(SIZES) * args.per_prompt
  grid = samples.reshape(len(names), per_class, *samples.shape[1:])[order].reshape(samples.shape)
  save_image_grid(out / "samples_by_class.png", grid, columns=per_class, zoom=2)
  for key, value in results.items():
    print(f"{key:32s} {value}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
