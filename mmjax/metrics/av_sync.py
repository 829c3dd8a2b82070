"""Audio-visual synchronisation: offset search over per-frame embeddings, and its accuracy.

Offset convention (the data set's): offset o > 0 means the audio lags the video by o frames,
so audio frame t + o belongs with video frame t. A clip of T frames is scored for every
candidate o in [-K, K] (K = `max_offset`) by the distance between the frame pairs that
hypothesis aligns:

    distances[n, K + o] = mean over t with 0 <= t, t + o < T of ||a[n, t + o] - v[n, t]||^2

and the predicted offset is the o of the smallest distance. Written with tau = -o this is the
mean of ||a_t - v_{t + tau}||^2, so tau* = argmin_tau gives predicted offset -tau*. The mean
(not the sum) over the T - |o| overlapping pairs keeps far offsets, which have fewer pairs,
comparable with near ones. Columns run from o = -K (column 0) to o = +K (column 2K).

All functions are jit-safe jax (K static) with no loop over the batch.
"""
import functools
import numbers

import chex
import jax
import jax.numpy as jnp


def sync_distances(audio_feats: jax.Array, video_feats: jax.Array,
                   max_offset: int) -> jax.Array:
  """Mean squared distance of the aligned frame pairs for each candidate offset.

  Args:
    audio_feats: [N, T, D] per-frame audio embeddings f_A(a_t).
    video_feats: [N, T, D] per-frame video embeddings f_V(v_t), same frame rate.
    max_offset: K, the largest |offset| tried (static); must be < T.

  Returns:
    [N, 2K + 1] float32; column K + o scores "audio lags video by o frames" (module
    docstring).
  """
  chex.assert_rank([audio_feats, video_feats], 3)
  if audio_feats.shape != video_feats.shape:
    raise ValueError(f"audio_feats and video_feats must share the shape [N, T, D], got "
                     f"{audio_feats.shape} and {video_feats.shape}.")
  n_frames = audio_feats.shape[1]
  if not 0 <= max_offset < n_frames:
    raise ValueError(f"max_offset must be in [0, T) = [0, {n_frames}) so that every offset "
                     f"leaves an overlapping frame, got max_offset={max_offset}.")
  return _sync_distances(audio_feats, video_feats, int(max_offset))


@functools.partial(jax.jit, static_argnames=("max_offset",))
def _sync_distances(audio_feats, video_feats, max_offset):
  audio_feats = audio_feats.astype(jnp.float32)
  video_feats = video_feats.astype(jnp.float32)
  n_frames = audio_feats.shape[1]
  columns = []
  for offset in range(-max_offset, max_offset + 1):  # 2K + 1 static slices
    start = max(offset, 0)
    stop = n_frames + min(offset, 0)
    audio = audio_feats[:, start:stop]  # frames t + o
    video = video_feats[:, start - offset:stop - offset]  # frames t
    columns.append(jnp.mean(jnp.sum(jnp.square(audio - video), axis=-1), axis=1))
  return jnp.stack(columns, axis=1)


def predict_offset(distances: jax.Array) -> jax.Array:
  """The offset of the smallest distance of each clip.

  Args:
    distances: [N, 2K + 1] from `sync_distances` (column K + o for offset o).

  Returns:
    [N] int32 offsets in [-K, K], in the data set's convention (> 0: audio lags video). Exact
    ties go to the offset nearest 0, then to the negative one.
  """
  chex.assert_rank(distances, 2)
  n_offsets = distances.shape[1]
  if n_offsets % 2 != 1:
    raise ValueError(f"distances must have 2K + 1 columns (offsets -K..K), got {n_offsets}.")
  return _predict_offset(distances)


@jax.jit
def _predict_offset(distances):
  max_offset = distances.shape[1] // 2
  # Candidates visited as 0, -1, 1, -2, 2, ...: argmin's first-index rule breaks ties.
  by_magnitude = sorted(range(-max_offset, max_offset + 1), key=lambda o: (abs(o), o))
  order = jnp.array(by_magnitude, jnp.int32)
  best = jnp.argmin(distances[:, order + max_offset], axis=1)
  return order[best]


def sync_accuracy(predicted: jax.Array, true: jax.Array, tolerance: int = 0) -> jax.Array:
  """Share of clips whose predicted offset is within `tolerance` frames of the true one.

  Args:
    predicted: [N] int predicted offsets (`predict_offset`).
    true: [N] int true offsets, same convention.
    tolerance: frames of slack (0: exact; 1: off by one counts as correct).

  Returns:
    float32 scalar in [0, 1].
  """
  chex.assert_rank([predicted, true], 1)
  if predicted.shape != true.shape:
    raise ValueError(f"predicted and true must both be [N], got {predicted.shape} and "
                     f"{true.shape}.")
  if not isinstance(tolerance, numbers.Integral) or tolerance < 0:
    raise ValueError(f"tolerance must be a non-negative int, got {tolerance!r}.")
  error = jnp.abs(jnp.asarray(predicted, jnp.int32) - jnp.asarray(true, jnp.int32))
  return jnp.mean(error <= tolerance).astype(jnp.float32)
