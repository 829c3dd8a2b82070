"""SpecAugment frequency and time masking (Park et al. 2019), jit-safe, per example.

All masks of a call come from ONE uniform draw (one PRNG kernel to compile, not four):

  u = jax.random.uniform(key, (*batch, num_freq_masks + num_time_masks, 2))  # float32 [0, 1)

`batch` is the spectrogram's leading shape `[...]`, so every example has its own masks. Mask k
is a frequency mask for k < num_freq_masks and a time mask otherwise; with W its maximum width
and N its axis length (n_mels or frames), in float32:

  width = min(floor(u[..., k, 0] * (W + 1)), W)                  # uniform on {0, ..., W}
  start = min(floor(u[..., k, 1] * (N - width + 1)), N - width)  # uniform on {0, ..., N - width}

and the mask covers [start, start + width) along its axis. Mask counts and maximum widths are
Python ints (static under jit); masks may overlap. Time warping is not implemented.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def spec_augment_masks(key: jax.Array, spec_shape, num_freq_masks: int = 2,
                       max_freq_width: int = 27, num_time_masks: int = 2,
                       max_time_width: int = 100) -> tuple[jax.Array, jax.Array]:
  """Which mel bins and which frames SpecAugment masks, drawn from `key` as the module
  docstring states.

  Args:
    key: a PRNG key.
    spec_shape: the spectrogram's shape `[..., n_mels, frames]`.
    num_freq_masks, num_time_masks: masks per example on each axis (>= 0).
    max_freq_width, max_time_width: largest mask width (0 <= width <= n_mels / frames).

  Returns:
    (bool `[..., n_mels]`, bool `[..., frames]`): True where a mask covers the bin / frame.
  """
  spec_shape = tuple(spec_shape)
  if len(spec_shape) < 2:
    raise ValueError(f"spectrogram must be [..., n_mels, frames], got shape {spec_shape}")
  *batch, n_mels, frames = spec_shape
  _check_policy(num_freq_masks, max_freq_width, n_mels, "freq", "n_mels")
  _check_policy(num_time_masks, max_time_width, frames, "time", "frames")
  draws = jax.random.uniform(key, (*batch, num_freq_masks + num_time_masks, 2))
  freq_masked = _axis_mask(draws[..., :num_freq_masks, :], max_freq_width, n_mels)
  time_masked = _axis_mask(draws[..., num_freq_masks:, :], max_time_width, frames)
  return freq_masked, time_masked


def spec_augment(spec: jax.Array, key: jax.Array, num_freq_masks: int = 2,
                 max_freq_width: int = 27, num_time_masks: int = 2, max_time_width: int = 100,
                 mask_value: float = 0.0) -> jax.Array:
  """`spec` `[..., n_mels, frames]` with SpecAugment's frequency and time masks set to
  `mask_value` (the rest untouched). Defaults: LibriSpeech "LD" policy (2 masks of up to 27
  mel bins, 2 masks of up to 100 frames). See `spec_augment_masks` and the module docstring
  for how the masks are drawn from `key`. Under jit, all arguments but spec, key and
  mask_value must be static."""
  spec = jnp.asarray(spec)
  freq_masked, time_masked = spec_augment_masks(key, spec.shape, num_freq_masks,
                                                max_freq_width, num_time_masks, max_time_width)
  masked = freq_masked[..., :, None] | time_masked[..., None, :]
  return jnp.where(masked, jnp.asarray(mask_value, spec.dtype), spec)


def _check_policy(num_masks, max_width, size, axis_name, size_name):
  for value, name in ((num_masks, f"num_{axis_name}_masks"),
                      (max_width, f"max_{axis_name}_width")):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be a non-negative int, got {value!r}")
  if max_width > size:
    raise ValueError(f"max_{axis_name}_width={max_width} is larger than the spectrogram's "
                     f"{size_name}={size}")


def _axis_mask(draws, max_width, size):
  """bool `[..., size]` from the `[..., num_masks, 2]` uniform draws of one axis."""
  widths = jnp.minimum(jnp.floor(draws[..., 0] * (max_width + 1)), max_width)
  starts = jnp.minimum(jnp.floor(draws[..., 1] * (size - widths + 1)), size - widths)
  position = jnp.arange(size, dtype=draws.dtype)
  covered = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
  return jnp.any(covered, axis=-2)
