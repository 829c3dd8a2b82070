"""Top-K classification accuracy, as used for zero-shot evaluation of contrastive models."""
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Whether each label is among the top-k logits.

  Ties are ordered by class index (lower first), as a stable descending sort would order
  them: the label is in the top k when fewer than k classes score higher, counting equal
  scores of lower-indexed classes as higher.

  Args:
    logits: [N, C] class scores.
    labels: [N] int class indices.
    k: K.

  Returns:
    [N] bool.
  """
  num_classes = logits.shape[-1]
  label_score = jnp.take_along_axis(logits, labels[:, None], axis=1)
  class_ids = jnp.arange(num_classes)[None, :]
  above = (logits > label_score) | ((logits == label_score) & (class_ids < labels[:, None]))
  return jnp.sum(above, axis=1) < k


def zero_shot_accuracy(logits: jax.Array, labels: jax.Array,
                       ks: Sequence[int] = (1,)) -> dict[str, jax.Array]:
  """Top-K accuracy of class scores (e.g. image embeddings x class-name text embeddings).

  Args:
    logits: [N, C] scores, higher = more likely.
    labels: [N] int true class in [0, C).
    ks: the K values.

  Returns:
    {"top1": [], "top5": [], ...}: float32 scalars in [0, 1], one per K in `ks`.
  """
  chex.assert_rank(logits, 2)
  chex.assert_rank(labels, 1)
  if labels.shape[0] != logits.shape[0]:
    raise ValueError(f"labels must have shape [N]=[{logits.shape[0]}] to match logits "
                     f"[N, C]={logits.shape}, got {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
  ks = tuple(int(k) for k in ks)
  if not ks or any(k < 1 for k in ks):
    raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}.")
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
    if lo < 0 or hi >= logits.shape[1]:
      raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got range [{lo}, {hi}].")
  return {f"top{k}": jnp.mean(topk_correct(logits, labels, k)).astype(jnp.float32)
          for k in ks}
