"""Image-text matching (ITM, BLIP): hard negatives mined from ITC similarities, and the loss.

BLIP (Li et al. 2022, arXiv 2201.12086) trains a binary "does this caption match this image"
head on the image-grounded text encoder. Random negatives are too easy, so for each image one
negative caption is drawn from the batch with probability softmax(sim_i2t[i]) over the
non-matching captions, and for each caption one negative image from softmax(sim_t2i[t]). The
ITM loss is the 2-way cross-entropy over [N positives; N (image, negative text); N (negative
image, text)].

Sharding: `mine_itm_negatives` is an ordinary jittable function of a `[N, N]` matrix. Call it
inside `jax.jit` on the GLOBAL similarity matrix of batch-sharded embeddings (e.g. `image_emb
@ text_emb.T` with `image_emb`, `text_emb` sharded over a data axis) and the negatives are mined
across all devices: XLA inserts the collectives, and with JAX's partitionable threefry PRNG (the
default) the draws are identical to the unsharded computation with the same key.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MATCH, NO_MATCH = 1, 0  # ITM head classes: logits[:, 1] scores "the caption matches".


class ITMNegatives(NamedTuple):
  """One mined negative per image and per text.

  Attributes:
    text_index: int32 `[N]`, the negative caption of image i (a row of the batch).
    image_index: int32 `[N]`, the negative image of text t.
    text_valid: bool `[N]`, False where every caption of the batch is a positive of image i
      (no negative exists; `text_index` is then arbitrary and must be ignored).
    image_valid: bool `[N]`, likewise for texts.
  """
  text_index: jax.Array
  image_index: jax.Array
  text_valid: jax.Array
  image_valid: jax.Array


def positive_mask_from_ids(ids: jax.Array) -> jax.Array:
  """Pairs that are positives because they share an id: bool `[N, N]` of `ids[i] == ids[j]`.

  Args:
    ids: `[N]` (an image/example id) or `[N, L]` (e.g. caption token ids: rows equal over all L
      positions are identical captions, so their pairs are positives).
  """
  ids = jnp.asarray(ids)
  if ids.ndim not in (1, 2):
    raise ValueError(f"ids must be [N] or [N, L], got shape {ids.shape}")
  if ids.ndim == 1:
    return ids[:, None] == ids[None, :]
  return jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)


def _check_similarity(sim_i2t: jax.Array, positive_mask: jax.Array | None) -> None:
  shape = np.shape(sim_i2t)
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"sim_i2t must be a square [N, N] matrix (image i vs text j), got shape "
                     f"{shape}")
  if shape[0] < 2:
    raise ValueError(f"mining ITM negatives needs a batch of N >= 2 pairs (a pair cannot be its "
                     f"own negative), got N={shape[0]}")
  if not jnp.issubdtype(jnp.result_type(sim_i2t), jnp.floating):
    raise ValueError(f"sim_i2t must be floating, got dtype {jnp.result_type(sim_i2t)}")
  if positive_mask is not None and np.shape(positive_mask) != shape:
    raise ValueError(f"positive_mask must be bool [N, N] = {list(shape)}, got shape "
                     f"{np.shape(positive_mask)}")


def negative_probabilities(sim: jax.Array, positive_mask: jax.Array | None = None) -> jax.Array:
  """Row-wise softmax of `sim` `[N, N]` over the negatives only: float32 `[N, N]`.

  The diagonal is always a positive; `positive_mask` (bool `[N, N]`, True = positive) adds
  more. A row with no negative is all zeros.
  """
  _check_similarity(sim, positive_mask)
  is_positive = _positives(sim.shape[0], positive_mask)
  logits = jnp.where(is_positive, -jnp.inf, sim.astype(jnp.float32))
  has_negative = ~jnp.all(is_positive, axis=1, keepdims=True)
  probs = jax.nn.softmax(jnp.where(has_negative, logits, 0.0), axis=1)
  return jnp.where(has_negative & ~is_positive, probs, 0.0)


def _positives(n: int, positive_mask: jax.Array | None) -> jax.Array:
  eye = jnp.eye(n, dtype=bool)
  return eye if positive_mask is None else eye | positive_mask.astype(bool)


def _sample_rows(rng: jax.Array, sim: jax.Array, is_positive: jax.Array):
  """One column per row of `sim` `[N, N]`, drawn from softmax over the non-positive columns."""
  logits = jnp.where(is_positive, -jnp.inf, jax.lax.stop_gradient(sim).astype(jnp.float32))
  index = jax.random.categorical(rng, logits, axis=1).astype(jnp.int32)
  return index, ~jnp.all(is_positive, axis=1)


def mine_itm_negatives(rng: jax.Array, sim_i2t: jax.Array,
                       positive_mask: jax.Array | None = None) -> ITMNegatives:
  """Hard negatives for ITM, sampled in proportion to the softmax of the ITC similarities.

  Works under `jax.jit`, `vmap` and with globally sharded inputs (mining then spans the whole
  global batch; see the module docstring). Gradients do not flow through the sampling.

  Args:
    rng: PRNG key; split internally into one key per direction.
    sim_i2t: float `[N, N]`, image i vs text j ITC logits (similarity / temperature: the
      temperature sets how hard the negatives are), N >= 2.
    positive_mask: optional bool `[N, N]`, True where text j also matches image i (duplicate
      captions or images; see `positive_mask_from_ids`). The diagonal is always positive.
  Returns:
    `ITMNegatives`: for each image a negative text, for each text a negative image.
  """
  _check_similarity(sim_i2t, positive_mask)
  is_positive = _positives(sim_i2t.shape[0], positive_mask)
  text_rng, image_rng = jax.random.split(rng)
  text_index, text_valid = _sample_rows(text_rng, sim_i2t, is_positive)
  image_index, image_valid = _sample_rows(image_rng, sim_i2t.T, is_positive.T)
  return ITMNegatives(text_index, image_index, text_valid, image_valid)


def itm_loss(positive_logits: jax.Array, negative_logits: jax.Array,
             negative_valid: jax.Array | None = None) -> jax.Array:
  """Mean 2-way cross-entropy of ITM logits: positives labelled MATCH, negatives NO_MATCH.

  Args:
    positive_logits: `[N, 2]` ITM head outputs of the matching pairs.
    negative_logits: `[M, 2]` of the mined negative pairs (BLIP: M = 2N, image-negatives then
      text-negatives).
    negative_valid: optional bool `[M]`; False rows (no negative existed) are left out.
  Returns:
    scalar float32, averaged over the N + (valid) M rows.
  """
  for name, logits in (("positive_logits", positive_logits), ("negative_logits", negative_logits)):
    if np.ndim(logits) != 2 or np.shape(logits)[1] != 2:
      raise ValueError(f"{name} must be [rows, 2] (no-match, match logits), got shape "
                       f"{np.shape(logits)}")
  num_negatives = np.shape(negative_logits)[0]
  if negative_valid is None:
    negative_valid = jnp.ones((num_negatives,), bool)
  elif np.shape(negative_valid) != (num_negatives,):
    raise ValueError(f"negative_valid must be bool [M] = [{num_negatives}], got shape "
                     f"{np.shape(negative_valid)}")
  logits = jnp.concatenate([positive_logits, negative_logits]).astype(jnp.float32)
  labels = jnp.concatenate([jnp.full((positive_logits.shape[0],), MATCH, jnp.int32),
                            jnp.full((num_negatives,), NO_MATCH, jnp.int32)])
  weights = jnp.concatenate([jnp.ones((positive_logits.shape[0],), jnp.float32),
                             negative_valid.astype(jnp.float32)])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
