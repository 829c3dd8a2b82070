"""`sample_cascade`: Imagen-style cascaded sampling, a base stage then super-resolution stages.

Each stage after the first is conditioned on the previous stage's output, resized to its own
shape and noised to time `noise_aug_t` of the stage's schedule (noise conditioning
augmentation, Ho et al. 2021 / Imagen), passed to its denoiser as the keywords `low_res`
[B, ...] and `low_res_t` [B].
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmjax.diffusion import forward
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
      upsample = stage.upsample or _resize
      up = upsample(low_res, tuple(stage.shape))
      if up.shape != (batch_size,) + tuple(stage.shape):
        raise ValueError(f"stage {index}: upsampled conditioning has shape {up.shape}, "
                         f"expected {(batch_size,) + tuple(stage.shape)}")
      aug_t = jnp.full((batch_size,), stage.noise_aug_t, stage.schedule.dtype)
      aug_noise = jax.random.normal(aug_key, up.shape, jnp.float32)
      stage_cond.update(low_res=forward.q_sample(stage.schedule, up, aug_t, aug_noise),
                        low_res_t=aug_t)
    x_T = jax.random.normal(noise_key, (batch_size,) + tuple(stage.shape), jnp.float32)
    low_res = sample(stage.denoise_fn, sample_key, x_T, stage.schedule, sampler=stage.sampler,
                     num_steps=stage.num_steps, prediction=stage.prediction,
                     spacing=stage.spacing, cond=stage_cond, **stage.sample_kwargs)
    outputs.append(low_res)
  return outputs


def _resize(images, shape):
  return jax.image.resize(images, (images.shape[0],) + shape, method="bilinear")
