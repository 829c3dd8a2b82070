"""`sample_cascade`: Imagen-style cascaded sampling, a base stage then super-resolution stages.

Each stage after the first is conditioned on the previous stage's output, resized to its own
shape and noised to time `noise_aug_t` of the stage's schedule (noise conditioning
augmentation, Ho et al. 2021 / Imagen), passed to its denoiser as the keywords `low_res`
[B, ...] and `low_res_t` [B]. `super_resolve` runs one such stage on given low-resolution
images; `refine_coarse_to_fine` is the SDEdit alternative to a super-resolution stage
(upsample, re-noise to a strength, denoise with a high-resolution model).
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmjax.diffusion import forward
from mmjax.diffusion.samplers import img2img
from mmjax.diffusion.samplers import sample
from mmjax.diffusion.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class CascadeStage:
  """One stage of a cascade.

  Attributes:
    denoise_fn: `(x_t, t, **cond) -> output`; stages after the first also get `low_res` and
      `low_res_t` (wrap it in `classifier_free_guidance` for guided stages: keys missing from
      its `uncond`, such as low_res, are shared by both calls).
    schedule: the stage's noise schedule.
    shape: per-example output shape, e.g. (64, 64, 3).
    sampler, num_steps, prediction, spacing: passed to `sample`.
    noise_aug_t: augmentation time for the conditioning image in [0, 1) (0 = none); may be
      traced.
    upsample: `(low_res [B, ...], shape) -> [B, *shape]`; default bilinear `jax.image.resize`.
    sample_kwargs: further keyword arguments for `sample` (eta, x0_transform, ...).
  """
  denoise_fn: Callable
  schedule: Schedule
  shape: tuple
  sampler: str = "dpmpp_2m"
  num_steps: int = 20
  prediction: str = "eps"
  spacing: str = "uniform"
  noise_aug_t: Any = 0.0
  upsample: Callable | None = None
  sample_kwargs: dict = dataclasses.field(default_factory=dict)


def sample_cascade(stages, key, batch_size: int, *, cond: dict | None = None):
  """Runs the stages in order from pure noise; returns each stage's output [B, *shape].

  `cond` (e.g. the text embedding) is passed to every stage.
  """
  if not stages:
    raise ValueError("sample_cascade needs at least one stage")
  outputs = []
  low_res = None
  for index, stage in enumerate(stages):
    key, noise_key, aug_key, sample_key = jax.random.split(key, 4)
    stage_cond = dict(cond or {})
    if index > 0:
      stage_cond.update(_augmented_condition(stage, aug_key, low_res, f"stage {index}"))
    low_res = _sample_stage(stage, noise_key, sample_key, batch_size, stage_cond)
    outputs.append(low_res)
  return outputs


def super_resolve(stage: CascadeStage, key, low_res, *, cond: dict | None = None):
  """One super-resolution stage on given low-resolution images: `low_res [B, ...]` ->
  `[B, *stage.shape]`, conditioned exactly as `sample_cascade` conditions a later stage
  (resized, noised to `stage.noise_aug_t`, passed as `low_res` and `low_res_t`)."""
  low_res = jnp.asarray(low_res)
  noise_key, aug_key, sample_key = jax.random.split(key, 3)
  stage_cond = dict(cond or {})
  stage_cond.update(_augmented_condition(stage, aug_key, low_res, "super_resolve"))
  return _sample_stage(stage, noise_key, sample_key, low_res.shape[0], stage_cond)


def refine_coarse_to_fine(denoise_fn, key, coarse, schedule: Schedule, *, shape, strength,
                          num_steps: int, upsample: Callable | None = None, **sample_kwargs):
  """Coarse-to-fine refinement (SDEdit with a high-resolution model, as SDXL's refiner).

  The coarse images are upsampled to `shape`, noised to t = strength and denoised back to
  t = 0 by `denoise_fn`, a model of the high-resolution data (typically trained only on
  t <= strength, see `forward.sample_train_times(max_time=...)`).

  Args:
    denoise_fn: `(x_t [B, *shape], t [B], **cond) -> output`, e.g. wrapped in
      `classifier_free_guidance`.
    coarse: [B, h, w, C] coarse images (any lower or equal resolution) in the model's space.
    shape: per-example output shape, e.g. (32, 32, 3).
    strength: in (0, 1], may be traced; small values keep the upsampled coarse image.
    upsample: `(coarse, shape) -> [B, *shape]`; default bilinear `jax.image.resize`.
    sample_kwargs: passed to `img2img` (sampler, prediction, spacing, cond, x0_transform ...).
  Returns:
    [B, *shape] refined images.
  """
  coarse = jnp.asarray(coarse)
  up = (upsample or _resize)(coarse, tuple(shape))
  if up.shape != coarse.shape[:1] + tuple(shape):
    raise ValueError(f"upsampled coarse images have shape {up.shape}, expected "
                     f"{coarse.shape[:1] + tuple(shape)}")
  return img2img(denoise_fn, key, up, schedule, strength=strength, num_steps=num_steps,
                 **sample_kwargs)


def _augmented_condition(stage, aug_key, low_res, where):
  """{low_res: the resized low_res noised to stage.noise_aug_t [B, *shape], low_res_t [B]}."""
  batch_size = low_res.shape[0]
  up = (stage.upsample or _resize)(low_res, tuple(stage.shape))
  if up.shape != (batch_size,) + tuple(stage.shape):
    raise ValueError(f"{where}: upsampled conditioning has shape {up.shape}, "
                     f"expected {(batch_size,) + tuple(stage.shape)}")
  aug_t = jnp.full((batch_size,), stage.noise_aug_t, stage.schedule.dtype)
  aug_noise = jax.random.normal(aug_key, up.shape, jnp.float32)
  return dict(low_res=forward.q_sample(stage.schedule, up, aug_t, aug_noise), low_res_t=aug_t)


def _sample_stage(stage, noise_key, sample_key, batch_size, cond):
  x_T = jax.random.normal(noise_key, (batch_size,) + tuple(stage.shape), jnp.float32)
  return sample(stage.denoise_fn, sample_key, x_T, stage.schedule, sampler=stage.sampler,
                num_steps=stage.num_steps, prediction=stage.prediction, spacing=stage.spacing,
                cond=cond, **stage.sample_kwargs)


def _resize(images, shape):
  return jax.image.resize(images, (images.shape[0],) + shape, method="bilinear")
