"""Imagen-style super-resolution stage: a text-conditioned UNet or DiT at the high resolution
that also sees the image at a low resolution (area-downsampled in training, a base model's
sample in a cascade).

Noise conditioning augmentation (Ho et al. 2021, Imagen): in training the upsampled low-res
image is noised with `q_sample` to a random level in [0, superres.max_aug_level] and the level
is given to the denoiser (`aug_level`), so that at sampling time the stage tolerates the base
stage's artefacts; evaluation and sampling use the fixed level `superres.aug_level`. The text
condition is dropped for classifier-free guidance exactly as in `DiffusionTask`; the low-res
image never is.

`sample` runs the whole cascade: the base text-to-image run in `cascade.base_workdir` (a
'diffusion' run at `superres.low_res_size` px, restored on first use), then this stage, both
with classifier-free guidance. `sample_superres` super-resolves given low-res images.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import diffusion
from mmjax.data import pipeline
from mmjax.train import sharding
from mmjax.train.tasks.diffusion import DiffusionTask
from mmjax.train.tasks.diffusion_spaces import PixelSpace


def area_downsample(images: jax.Array, size: int) -> jax.Array:
  """Box filter: `[B, H, W, C]` -> `[B, size, size, C]`, the mean of each (H/size)^2 block."""
  batch, height, width, channels = images.shape
  if height % size or width % size:
    raise ValueError(f"image size {height}x{width} is not a multiple of the low-res size {size}")
  blocks = images.reshape(batch, size, height // size, size, width // size, channels)
  return blocks.mean(axis=(2, 4))


def low_res_condition(schedule: diffusion.Schedule, x0: jax.Array, low_res_size: int,
                      aug_level: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
  """The SR denoiser's conditioning for clean high-res data `x0 [B, H, W, C]`.

  x0 is area-downsampled to `low_res_size`, upsampled back (bilinear, as `sample_cascade`
  upsamples a base sample) and noised to time `aug_level [B]` of `schedule`.

  Returns:
    {"low_res": [B, H, W, C] float32, "aug_level": [B]}; level 0 leaves the image clean.
  """
  low = area_downsample(x0.astype(jnp.float32), low_res_size)
  up = jax.image.resize(low, x0.shape, method="bilinear")
  noise = jax.random.normal(key, up.shape, jnp.float32)
  return {"low_res": diffusion.q_sample(schedule, up, aug_level, noise), "aug_level": aug_level}


def cascade_keywords_to_denoiser(denoise_fn):
  """Maps `sample_cascade`'s stage keywords (`low_res`, `low_res_t`) onto the denoiser's
  (`low_res`, `aug_level`): the augmentation time is the level it was trained with."""
  def stage_denoise_fn(x_t, t, *, low_res, low_res_t, **cond):
    return denoise_fn(x_t, t, low_res=low_res, aug_level=low_res_t, **cond)
  return stage_denoise_fn


def _bind(denoise_fn, cond: dict):
  """`denoise_fn` with keyword arrays `cond` fixed: each cascade stage has its own text
  encoder, so its context cannot travel in `sample_cascade`'s shared `cond`."""
  def bound(x_t, t, **extra):
    return denoise_fn(x_t, t, **cond, **extra)
  return bound


def cascade_stage(task: DiffusionTask, params, tokens, count: int, guidance, *, sampler: str,
                  steps: int, **stage_kwargs) -> diffusion.CascadeStage:
  """`task`'s model as a guided `CascadeStage` drawing `count` images for `tokens`
  `[count, L]` (None: unconditional); `stage_kwargs` go to `CascadeStage` (noise_aug_t).

  A super-resolution task's denoiser gets the cascade's keywords through
  `cascade_keywords_to_denoiser`; a text-to-image task's is a base stage (no low-res input)."""
  denoise, cond = task._guided_denoiser(params, tokens, count, guidance)
  options = task._sampler_options()
  prediction = options.pop("prediction")
  denoise = _bind(denoise, cond)
  if isinstance(task, SuperResolutionTask):
    denoise = cascade_keywords_to_denoiser(denoise)
  return diffusion.CascadeStage(denoise, task.schedule, task.space.shape, sampler=sampler,
                                num_steps=steps, prediction=prediction, sample_kwargs=options,
                                **stage_kwargs)


def load_base_stage(cascade: ml_collections.ConfigDict, low_res_size: int
                    ) -> tuple[DiffusionTask, Any]:
  """(the base `DiffusionTask`, its params on the host) of the run in `cascade.base_workdir`.

  Its config is `cascade.base_config` (a config file) if set, else the run's config.json.
  """
  from mmjax.train.config import load_config, load_run_config
  from mmjax.train.trainer import restore_params
  if not cascade.base_workdir:
    raise ValueError("cascade.base_workdir is unset: the cascade needs a trained base stage, a "
                     f"'diffusion' run at superres.low_res_size={low_res_size} px; set "
                     "--config.cascade.base_workdir=DIR (or use sample_superres)")
  workdir = pathlib.Path(cascade.base_workdir)
  if cascade.base_config:
    config = load_config(cascade.base_config)
  else:
    config = load_run_config(workdir, "set --config.cascade.base_workdir to a trained base "
                             "run (experiments/cascade_shapeworld/README.md), or "
                             "cascade.base_config to its config file")
  if config.task != "diffusion":
    raise ValueError(f"cascade.base_workdir={str(workdir)!r} holds a {config.task!r} run, "
                     "expected a 'diffusion' run")
  if config.data.image_size != low_res_size:
    raise ValueError(f"the base stage in {str(workdir)!r} makes {config.data.image_size} px "
                     f"images but superres.low_res_size={low_res_size}")
  autoencoder = config.get("autoencoder")
  if autoencoder is not None and autoencoder.workdir:
    raise ValueError(f"the base stage in {str(workdir)!r} is a latent diffusion model; the "
                     "cascade needs a pixel-space base")
  run = restore_params(config, workdir, devices=jax.local_devices()[:1])
  return run.task, sharding.to_host(run.params)


class SuperResolutionTask(DiffusionTask):
  """Text-conditioned super-resolution from `superres.low_res_size` to `data.image_size`."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    if not isinstance(self.space, PixelSpace):
      raise ValueError("the super-resolution task works in pixel space; unset "
                       "autoencoder.workdir")
    sr = config.superres
    low, high = sr.low_res_size, config.data.image_size
    if not 0 < low < high or high % low:
      raise ValueError(f"superres.low_res_size={low} must be smaller than and divide "
                       f"data.image_size={high}")
    for key in ("max_aug_level", "aug_level"):
      if not 0.0 <= sr[key] < 1.0:
        raise ValueError(f"superres.{key} must be in [0, 1), got {sr[key]}")
    self._base = None

  def _denoiser_extras(self) -> dict[str, Any]:
    return {"low_res_channels": 3, "aug_level_embedding": True}

  def _extra_condition(self, x0, key, train):
    sr = self.config.superres
    level_key, noise_key = jax.random.split(key)
    if train:
      level = jax.random.uniform(level_key, x0.shape[:1], jnp.float32, 0.0, sr.max_aug_level)
    else:
      level = jnp.full(x0.shape[:1], sr.aug_level, jnp.float32)
    return low_res_condition(self.schedule, x0, sr.low_res_size, level, noise_key)

  # -- sampling -------------------------------------------------------------------------------

  def base_stage(self) -> tuple[DiffusionTask, Any]:
    """The base stage (task, params), restored from `cascade.base_workdir` on first use."""
    if self._base is None:
      self._base = load_base_stage(self.config.cascade, self.config.superres.low_res_size)
    return self._base

  def sample(self, params, prompts: Sequence[str] | None, *, num_samples: int = 4,
             steps: int = 20, guidance: float = 3.0, sampler: str = "dpmpp_2m",
             seed: int = 0) -> np.ndarray:
    """The whole cascade (base stage, then this one); see `sample_with_base`."""
    self._sampling_tokens(prompts, num_samples, steps, sampler)  # fail before restoring
    base_task, base_params = self.base_stage()
    return self.sample_with_base(params, base_task, base_params, prompts,
                                 num_samples=num_samples, steps=steps, guidance=guidance,
                                 sampler=sampler, seed=seed)

  def sample_with_base(self, params, base_task: DiffusionTask, base_params,
                       prompts: Sequence[str] | None, *, num_samples: int = 4, steps: int = 20,
                       guidance: float = 3.0, sampler: str = "dpmpp_2m", seed: int = 0,
                       aug_level: float | None = None) -> np.ndarray:
    """Cascade sampling: `base_task` draws low-res images, this stage super-resolves them.

    Both stages use classifier-free guidance `guidance` and the same sampler and steps; the
    base output is noise-augmented to `aug_level` (default `superres.aug_level`). Guidance
    and aug_level are traced: one compilation per (sampler, steps, conditional or not).

    Returns:
      float32 `[P * num_samples, S, S, 3]` in [0, 1], prompt-major.
    """
    tokens, count = self._sampling_tokens(prompts, num_samples, steps, sampler)
    base_tokens, _ = base_task._sampling_tokens(prompts, num_samples, steps, sampler)

    def build():
      def run(params, count, tokens, key, guidance, base_params, base_tokens, aug_level):
        kw = dict(sampler=sampler, steps=int(steps))
        stages = [cascade_stage(base_task, base_params, base_tokens, count, guidance, **kw),
                  cascade_stage(self, params, tokens, count, guidance, noise_aug_t=aug_level,
                                **kw)]
        return self.space.decode(diffusion.sample_cascade(stages, key, count)[-1])
      return run

    run = self._jitted(("cascade", id(base_task), sampler, int(steps), tokens is None), build)
    images = run(params, count, tokens, jax.random.key(seed), jnp.float32(guidance), base_params,
                 base_tokens, self._aug_level(aug_level))
    return np.asarray(sharding.to_host(images))

  def sample_superres(self, params, low_res_images, prompts: Sequence[str] | None, *,
                      steps: int = 20, guidance: float = 3.0, sampler: str = "dpmpp_2m",
                      seed: int = 0, aug_level: float | None = None) -> np.ndarray:
    """Super-resolves given images (`mmjax.diffusion.super_resolve`).

    Args:
      low_res_images: `[N, h, w, 3]` in [0, 1] (any h, w; upsampled bilinearly).
      prompts: N captions, one per image, or None (null context).
      aug_level: noise augmentation of the low-res images (default `superres.aug_level`).
    Returns:
      float32 `[N, S, S, 3]` in [0, 1].
    """
    low_res = np.asarray(low_res_images, np.float32)
    if low_res.ndim != 4 or low_res.shape[-1] != 3 or not len(low_res):
      raise ValueError(f"low_res_images must be [N, h, w, 3] with N >= 1, got {low_res.shape}")
    per_prompt = 1 if prompts is not None else len(low_res)
    tokens, count = self._sampling_tokens(prompts, per_prompt, steps, sampler)
    if count != len(low_res):
      raise ValueError(f"give one prompt per low-res image: {count} prompts, {len(low_res)} "
                       "images")

    def build():
      def run(params, count, tokens, key, guidance, low_res, aug_level):
        stage = cascade_stage(self, params, tokens, count, guidance, sampler=sampler,
                              steps=int(steps), noise_aug_t=aug_level)
        return self.space.decode(diffusion.super_resolve(stage, key, self.space.encode(low_res)))
      return run

    run = self._jitted(("superres", sampler, int(steps), tokens is None), build)
    images = run(params, count, tokens, jax.random.key(seed), jnp.float32(guidance), low_res,
                 self._aug_level(aug_level))
    return np.asarray(sharding.to_host(images))

  def _aug_level(self, aug_level: float | None) -> jax.Array:
    level = self.config.superres.aug_level if aug_level is None else aug_level
    if not 0.0 <= float(level) < 1.0:
      raise ValueError(f"aug_level must be in [0, 1), got {level}")
    return jnp.float32(level)

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    """samples.png: per held-out test image, [bilinear upsampling of its low-res version,
    this stage's sample from it, the original], with its first caption (samples.txt)."""
    from mmjax.train import plots
    cfg = self.config.sample
    source = self._source("test", len(cfg.prompts))
    count = len(source)
    arrays = pipeline.eval_arrays(source, self.tokenizer, self.config.data.context_length, count)
    first_caption = np.unique(arrays["text_to_image"], return_index=True)[1]
    captions = [arrays["captions"][i] for i in first_caption]
    images = arrays["image"]
    low = np.asarray(area_downsample(images, self.config.superres.low_res_size))
    samples = self.sample_superres(params, low, captions, steps=cfg.steps, guidance=cfg.guidance,
                                   sampler=cfg.sampler, seed=cfg.seed)
    if jax.process_index() != 0:
      return []
    upsampled = np.asarray(jax.image.resize(low, images.shape, method="bilinear"))
    grid = np.stack([upsampled, samples, images], axis=1).reshape((-1,) + images.shape[1:])
    path = plots.save_image_grid(workdir / "samples.png", grid, columns=3, zoom=cfg.zoom)
    (workdir / "samples.txt").write_text(
        "columns: bilinear upsampling | super-resolution | original\n" + "\n".join(captions)
        + "\n")
    return [plots.loss_curve(workdir), path]
