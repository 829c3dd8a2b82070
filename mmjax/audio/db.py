"""Decibels of power spectrograms (`librosa.power_to_db`) and the log-mel front end.

librosa treats its whole input as one spectrogram: `ref=np.max` and the `top_db` floor use the
maximum over every element. A batch `[..., n_mels, frames]` here is many spectrograms, so both
are taken per example, over the last two axes (the whole array for 0-D/1-D input): each
example's result equals `librosa.power_to_db(S[b], ...)`, and one loud clip does not push the
quiet clips of its batch onto the floor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.audio.mel import melspectrogram


def power_to_db(S, ref=1.0, amin: float = 1e-10, top_db: float | None = 80.0) -> jax.Array:
  """`10 log10(max(amin, S)) - 10 log10(max(amin, ref))`, floored at `peak - top_db`.

  Args:
    S: `[..., n_mels, frames]` power spectrogram(s) (any `[..., F, T]`; complex input is
      replaced by its magnitude, as librosa).
    ref: a number (or array broadcastable to S) in the same power units, or a callable applied
      to each example's `[F, T]` spectrogram that returns a scalar, e.g. `np.max` or
      `jnp.max` (it is `jax.vmap`-ed over the leading axes, so it must be traceable: `np.max`
      works, `np.median` does not, `jnp.median` does).
    amin: floor of S and ref before the log (> 0).
    top_db: per example, values below `max - top_db` are raised to it; None disables it.

  Returns:
    `[..., F, T]` dB values (float32 for float32 / integer input).
  """
  if not amin > 0:
    raise ValueError(f"amin must be strictly positive, got {amin!r}")
  if top_db is not None and not top_db >= 0:
    raise ValueError(f"top_db must be None or >= 0, got {top_db!r}")
  S = jnp.asarray(S)
  if jnp.iscomplexobj(S):
    S = jnp.abs(S)
  if not jnp.issubdtype(S.dtype, jnp.floating):
    S = S.astype(jnp.float32)
  example_axes = tuple(range(S.ndim - min(S.ndim, 2), S.ndim))
  ref_value = _per_example_ref(ref, S, len(example_axes)) if callable(ref) else jnp.abs(ref)
  log_spec = 10.0 * jnp.log10(jnp.maximum(amin, S))
  log_spec = log_spec - 10.0 * jnp.log10(jnp.maximum(amin, ref_value))
  if top_db is not None:
    peak = jnp.max(log_spec, axis=example_axes, keepdims=True)
    log_spec = jnp.maximum(log_spec, peak - top_db)
  return log_spec.astype(S.dtype)


def _per_example_ref(ref, S, example_ndim):
  """`ref` of each example `[F, T]`, shaped `[..., 1, 1]` to broadcast against S."""
  batch_shape, example_shape = S.shape[:S.ndim - example_ndim], S.shape[S.ndim - example_ndim:]
  if batch_shape:
    flat = S.reshape(-1, *example_shape)
    values, expected = jax.vmap(ref)(flat), (flat.shape[0],)
  else:
    values, expected = ref(S), ()
  values = jnp.asarray(values)
  if values.shape != expected:
    raise ValueError(f"ref callable must return a scalar per example of shape {example_shape},"
                     f" got shape {values.shape[len(expected):]}")
  return values.reshape(*batch_shape, *(1,) * example_ndim)


def log_mel(y, sr: float = 22050, n_fft: int = 2048, hop_length: int = 512,
            win_length: int | None = None, window="hann", center: bool = True,
            pad_mode: str = "constant", power: float = 2.0, n_mels: int = 128,
            fmin: float = 0.0, fmax: float | None = None, htk: bool = False, norm="slaney",
            ref=1.0, amin: float = 1e-10, top_db: float | None = 80.0) -> jax.Array:
  """`power_to_db(melspectrogram(y, ...), ref, amin, top_db)`: float32 `[..., n_mels, frames]`
  log-mel features of `[..., samples]` waveforms; each example equals
  `librosa.power_to_db(librosa.feature.melspectrogram(y=y[b], ...), ...)`."""
  mel = melspectrogram(y, sr, n_fft, hop_length, win_length, window, center, pad_mode, power,
                       n_mels, fmin, fmax, htk, norm)
  return power_to_db(mel, ref, amin, top_db)
