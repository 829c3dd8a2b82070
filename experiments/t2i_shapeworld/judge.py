"""Judges a trained text-to-image diffusion run with a trained ShapeWorld CLIP run.

  python experiments/t2i_shapeworld/judge.py --diffusion runs/t2i --clip runs/clip \
      [--step latest|all|500,1000] [--per-prompt 4] [--steps 20] [--guidance 3 | 0,1,2,3,5]
      [--sampler dpmpp_2m] [--out DIR]

For every (colour, shape) class and both sizes, the prompt "a {size} {colour} {shape}." is
sampled `--per-prompt` times. Each sample is upsampled (bilinear) to the CLIP run's image size
and classified zero-shot over the 48 classes with the CLIP task's own class embeddings (prompt
templates averaged). Reported:

- prompt_accuracy: the judged class is the prompted one (colour and shape both right), with
  its binomial standard error prompt_accuracy_se, plus prompt_colour_accuracy and
  prompt_shape_accuracy, each also for the held-out classes (suffix _heldout; the diffusion
  model never saw a held-out (colour, shape) pair in training);
- judge_on_real_accuracy (and colour, shape, held-out): the same judge on twice as many real
  single-object test images rendered at the diffusion run's size and upsampled the same way:
  the ceiling of what the judge can confirm at this resolution;
- fid_clip / fid_clip_real_vs_real: Frechet distance (mmjax.metrics.fid_from_features) in the
  judge's normalised image-embedding space, samples vs real test images, and real vs a disjoint
  real set of the same size (the noise floor). This is not the Inception FID: no Inception
  weights are downloaded here, so the judge's own features stand in.

Each judged (checkpoint, guidance) pair appends one row to `judge.jsonl` (with the run's wall
time to that checkpoint, `train_wall_s`), overwrites `judge.json` with it and writes
`samples_by_class_step<N>_guidance<G>.png` (one row per class, train-split classes first) in
`--out` (default: the diffusion workdir). `curve.py` plots judge.jsonl.
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


def _standard_error(pred: np.ndarray, target: np.ndarray) -> float:
  """Binomial standard error of the train-split prompt accuracy, sqrt(p (1 - p) / n)."""
  rows = ~shapeworld.heldout_mask()[target]
  p = float(np.mean(pred[rows] == target[rows]))
  return float(np.sqrt(p * (1 - p) / rows.sum()))


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


def _train_wall_seconds(workdir: pathlib.Path, step: int) -> tuple[float | None, str]:
  """(wall-clock seconds the run took to reach `step`, where that figure comes from): the
  trainer's `wall_s` at `step` in train.jsonl, or None when it was not logged there."""
  rows = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()
          if line.strip()] if (workdir / "train.jsonl").is_file() else []
  logged = [r["wall_s"] for r in rows if r.get("step") == step and "wall_s" in r]
  if logged:
    return float(logged[-1]), "train.jsonl wall_s"
  return None, "not logged"


def _checkpoint_steps(workdir: pathlib.Path, which: str) -> list[int]:
  """The steps `--step` names ("latest", "all" or "250,500") that have a checkpoint."""
  directory = workdir / "checkpoints"
  saved = sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit()) \
      if directory.is_dir() else []
  if not saved:
    sys.exit(f"no checkpoint in {directory}: train the diffusion run first")
  if which == "latest":
    return saved[-1:]
  if which == "all":
    return saved
  wanted = [int(s) for s in which.split(",")]
  missing = [s for s in wanted if s not in saved]
  if missing:
    sys.exit(f"--step {which}: no checkpoint for steps {missing}; saved steps are {saved}")
  return wanted


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--diffusion", required=True, help="workdir of a trained diffusion run")
  parser.add_argument("--clip", required=True, help="workdir of a trained contrastive run")
  parser.add_argument("--step", default="latest",
                      help='checkpoints to judge: "latest", "all" or steps like "500,1000"')
  parser.add_argument("--per-prompt", type=int, default=4)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--guidance", default="3",
                      help="CFG scale, or several separated by commas (one compiled sampler)")
  parser.add_argument("--sampler", default="dpmpp_2m")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="output folder (default: --diffusion)")
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.diffusion)
  out = pathlib.Path(args.out or args.diffusion)
  guidances = [float(g) for g in args.guidance.split(",")]

  clip = _load(pathlib.Path(args.clip))
  if clip.task.config.task != "contrastive":
    sys.exit(f"--clip must be a contrastive run, got task {clip.task.config.task!r}")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  steps = _checkpoint_steps(workdir, args.step)
  class_emb = np.asarray(clip.task.zero_shot_embeddings(clip.params, clip.mesh)["class_emb"])
  names = shapeworld.class_names()
  prompts = [f"a {size} {name}." for name in names for size in SIZES]
  targets = np.repeat(np.arange(len(names)), len(SIZES) * args.per_prompt)
  count = len(targets)
  size = config.data.image_size
  real, real_labels = _real_images(size, 2 * count, start=0)
  real_pred, real_emb = _judge(clip, class_emb, real)
  ceiling = _accuracies(real_pred, real_labels, "judge_on_real_")
  fid_floor = metrics.fid_from_features(real_emb[count:], real_emb[:count])

  out.mkdir(parents=True, exist_ok=True)
  for step in steps:
    ddpm = restore_params(config, workdir, step=step)
    wall, wall_source = _train_wall_seconds(workdir, step)
    for guidance in guidances:
      start = time.perf_counter()
      samples = []
      chunk = 16  # prompts per sampler call (fixed shapes: one compilation)
      for first in range(0, len(prompts), chunk):
        samples.append(ddpm.task.sample(ddpm.params, prompts[first:first + chunk],
                                        num_samples=args.per_prompt, steps=args.steps,
                                        guidance=guidance, sampler=args.sampler,
                                        seed=args.seed + first))
      samples = np.concatenate(samples)
      sample_seconds = time.perf_counter() - start
      pred, sample_emb = _judge(clip, class_emb, samples)
      results = dict(
          diffusion_workdir=str(workdir), diffusion_step=step, train_wall_s=wall,
          train_wall_source=wall_source, clip_workdir=str(args.clip), clip_step=clip.step,
          clip_image_size=clip.task.config.data.image_size, samples=count,
          per_prompt=args.per_prompt, steps=args.steps, guidance=guidance,
          sampler=args.sampler, seed=args.seed, sample_seconds=round(sample_seconds, 1),
          **_accuracies(pred, targets, "prompt_"),
          prompt_accuracy_se=_standard_error(pred, targets),
          **ceiling,
          fid_clip=metrics.fid_from_features(sample_emb, real_emb[:count]),
          fid_clip_real_vs_real=fid_floor)
      (out / "judge.json").write_text(json.dumps(results, indent=1) + "\n")
      with (out / "judge.jsonl").open("a") as f:
        f.write(json.dumps(results) + "\n")
      order = np.argsort(shapeworld.heldout_mask(), kind="stable")  # train-split classes first
      per_class = len(SIZES) * args.per_prompt
      grid = samples.reshape(len(names), per_class, *samples.shape[1:])[order]
      save_image_grid(out / f"samples_by_class_step{step}_guidance{guidance:g}.png",
                      grid.reshape(samples.shape), columns=per_class, zoom=2)
      print(" ".join(f"{k}={results[k]}" for k in (
          "diffusion_step", "train_wall_s", "guidance", "prompt_accuracy",
          "prompt_accuracy_se", "prompt_accuracy_heldout", "judge_on_real_accuracy",
          "fid_clip", "fid_clip_real_vs_real")), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
