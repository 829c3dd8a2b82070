"""Next-token cross-entropy with distance-aware targets for coordinate (location-bin) tokens.

Plain cross-entropy treats a box corner quantised to bin k as one class of a num_bins-way
classification: predicting bin k + 1 costs as much as predicting the far side of the image, so
the decoder gets no signal that it is close, and learns each bin on its own. With
`bin_sigma > 0`, a target that is a bin gets a discretised Gaussian over the bins instead,

    q_j = exp(-(j - k)^2 / (2 sigma^2)) / sum_i exp(-(i - k)^2 / (2 sigma^2)),  j in bins,

(word tokens get 0), and its loss is the cross-entropy -sum_j q_j log p_j against the model's
distribution over the whole vocabulary. q peaks at k, so the minimiser p = q still decodes to
bin k by argmax; the loss at that minimum is q's entropy rather than 0. Targets that are words
keep the one-hot cross-entropy. The same soft-label idea is SimCC's and the distribution focal
loss's for keypoint and box coordinates.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_bin_targets(bins: jax.Array, num_bins: int, sigma: float) -> jax.Array:
  """Target distributions float32 `[..., num_bins]` (each sums to 1) of bin indices `[...]`.

  sigma is in bins; it must be > 0 (sigma -> 0 is the one-hot target).
  """
  if sigma <= 0:
    raise ValueError(f"bin_sigma must be > 0 for soft bin targets, got {sigma}")
  offsets = jnp.arange(num_bins, dtype=jnp.float32) - bins[..., None].astype(jnp.float32)
  return jax.nn.softmax(-0.5 * jnp.square(offsets / sigma), axis=-1)


def token_nll(logits: jax.Array, tokens: jax.Array, first_bin: int | None = None,
              num_bins: int = 0, bin_sigma: float = 0.0) -> jax.Array:
  """Per-position next-token cross-entropy float32 `[B, L - 1]` of a teacher-forced decoder.

  Args:
    logits: `[B, L, V]` (logits[:, t] predict tokens[:, t + 1]).
    tokens: int `[B, L]`.
    first_bin: id of coordinate bin 0; bins are ids first_bin .. first_bin + num_bins - 1.
      Only read when bin_sigma > 0.
    num_bins: number of coordinate bins.
    bin_sigma: width in bins of the Gaussian target of a bin token; 0 keeps the one-hot
      target everywhere (the plain cross-entropy).
  Returns:
    nll `[B, L - 1]` at every position, padding included (the caller masks).
  """
  if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
    raise ValueError(f"logits must be [B, L, V] and tokens [B, L] with the same B, L; got "
                     f"{logits.shape} and {tokens.shape}")
  targets = tokens[:, 1:]
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if bin_sigma == 0:
    return nll
  if bin_sigma < 0:
    raise ValueError(f"bin_sigma must be >= 0 (0: one-hot targets), got {bin_sigma}")
  if first_bin is None or num_bins < 2 or first_bin + num_bins > logits.shape[-1]:
    raise ValueError(f"soft bin targets need first_bin and num_bins >= 2 with the bins inside "
                     f"the vocabulary of {logits.shape[-1]}; got first_bin={first_bin}, "
                     f"num_bins={num_bins}")
  bin_index = targets - first_bin
  is_bin = (bin_index >= 0) & (bin_index < num_bins)
  soft = gaussian_bin_targets(jnp.clip(bin_index, 0, num_bins - 1), num_bins, bin_sigma)
  bin_nll = -jnp.einsum("blj,blj->bl", soft, log_probs[..., first_bin:first_bin + num_bins])
  return jnp.where(is_bin, bin_nll, nll)
