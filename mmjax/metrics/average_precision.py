"""Average precision and mAP, equal to scikit-learn's `average_precision_score`.

AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds k, highest first (no
interpolation). Samples with equal scores form one threshold, so ties are grouped: a
positive tied with negatives gets the precision of the whole tied group. A class with no
positive scores 0 (sklearn sets its recall to 1 everywhere, which makes the sum 0).
"""
import functools

import chex
import jax
import jax.numpy as jnp

AVERAGES = ("macro", "micro", "weighted", "samples", None)


def binary_average_precision(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """AP of one ranking.

  Args:
    scores: [N] scores, higher = more likely positive.
    labels: [N] 0/1 (or bool) ground truth.

  Returns:
    [] AP in [0, 1] (0 when there is no positive).
  """
  n = scores.shape[0]
  dtype = jnp.result_type(scores.dtype, jnp.float32)
  order = jnp.argsort(-scores)
  sorted_scores = scores[order]
  positives = labels[order].astype(dtype)
  true_positives = jnp.cumsum(positives)
  positions = jnp.arange(n)
  is_group_end = jnp.concatenate([sorted_scores[1:] != sorted_scores[:-1], jnp.array([True])])
  # Every sample takes the precision at the end of its tie group.
  group_end = jax.lax.cummin(jnp.where(is_group_end, positions, n - 1), reverse=True)
  precision = true_positives[group_end] / (group_end + 1).astype(dtype)
  n_positives = true_positives[-1]
  return jnp.where(n_positives > 0,
                   jnp.sum(positives * precision) / jnp.maximum(n_positives, 1), 0.0)


@functools.partial(jax.jit, static_argnames=("average",))
def _mean_average_precision(scores, labels, average):
  if scores.ndim == 1:
    return binary_average_precision(scores, labels)
  if average == "micro":
    return binary_average_precision(scores.reshape(-1), labels.reshape(-1))
  if average == "samples":
    return jnp.mean(jax.vmap(binary_average_precision)(scores, labels))
  per_class = jax.vmap(binary_average_precision, in_axes=1)(scores, labels)
  if average is None:
    return per_class
  if average == "weighted":
    support = jnp.sum(labels, axis=0).astype(per_class.dtype)
    return jnp.sum(per_class * support) / jnp.maximum(jnp.sum(support), 1)
  return jnp.mean(per_class)


def mean_average_precision(scores: jax.Array, labels: jax.Array,
                           average: str | None = "macro") -> jax.Array:
  """Average precision, as `sklearn.metrics.average_precision_score(labels, scores)`.

  Args:
    scores: [N] (binary) or [N, C] (one score per class).
    labels: same shape as `scores` with 0/1 entries (multi-label indicator), or [N] int
      class indices in [0, C) for [N, C] scores (one-hot encoded here; unlike sklearn a
      class absent from `labels` is kept and scores 0).
    average: 'macro' (mean over classes), 'micro' (all entries as one ranking),
      'weighted' (by class support), 'samples' (mean over rows) or None (per class).

  Returns:
    [] AP in [0, 1], or [C] per-class APs when average is None.
  """
  if average not in AVERAGES:
    raise ValueError(f"average must be one of {AVERAGES}, got {average!r}.")
  scores, labels = jnp.asarray(scores), jnp.asarray(labels)
  if scores.ndim not in (1, 2):
    raise ValueError(f"scores must have shape [N] or [N, C], got {scores.shape}.")
  if scores.ndim == 2 and labels.ndim == 1:
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"[N] labels for [N, C] scores must be integer class indices, got "
                       f"{labels.dtype}.")
    labels = jax.nn.one_hot(labels, scores.shape[1], dtype=jnp.int32)
  chex.assert_equal_shape([scores, labels])
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  return _mean_average_precision(scores, labels, average)
