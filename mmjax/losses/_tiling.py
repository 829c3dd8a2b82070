"""Machinery shared by the blockwise and ring contrastive losses (private).

`contrastive.py` (clip_loss), `sigmoid.py` (siglip_loss) and `sharded.py` (their ring versions)
all cut the embeddings into blocks and fold every `[block, block]` tile of U V^T / t into
running statistics, so that no `[N, N]` array ever exists. This module holds the argument
checks they share, the tiling itself (`to_blocks`, `tile_scan`, ...), and the per-tile passes
of each loss: log-sum-exp and softmax-gradient passes for InfoNCE, softplus and
sigmoid-gradient passes for the sigmoid loss. The ring versions call the same passes on
(local rows, visiting column shard) pairs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------------------------
# Argument checks shared by every blockwise and ring loss.


def check_embeddings(image_emb: jax.Array, text_emb: jax.Array, name: str) -> None:
  """Raises ValueError unless both embeddings are `[N, D]` arrays of the same shape."""
  image_shape, text_shape = np.shape(image_emb), np.shape(text_emb)
  if len(image_shape) != 2 or image_shape != text_shape:
    raise ValueError(
        f"{name}: expected image_emb and text_emb of the same shape [N, D], got "
        f"image_emb {image_shape} and text_emb {text_shape}")
  if image_shape[0] == 0:
    raise ValueError(f"{name}: expected at least one pair, got N=0")
  for arg, value in (("image_emb", image_emb), ("text_emb", text_emb)):
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise ValueError(f"{name}: expected a floating {arg}, got dtype {jnp.result_type(value)}")


def check_scalar(value: Any, arg: str, name: str) -> None:
  """Raises ValueError unless `value` is a scalar (shape `[]`)."""
  if np.ndim(value) != 0:
    raise ValueError(f"{name}: expected a scalar {arg}, got shape {np.shape(value)}")


def check_block_size(block_size: int | None, name: str) -> None:
  if block_size is not None and (isinstance(block_size, bool) or not isinstance(
      block_size, (int, np.integer)) or block_size < 1):
    raise ValueError(f"{name}: expected block_size None or a positive int, got {block_size!r}")


def compute_dtype(*arrays: Any) -> jnp.dtype:
  """Float32 at least: bf16/fp16 embeddings are accumulated in float32, float64 stays."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


# --------------------------------------------------------------------------------------------
# Tiling: blocks of rows, and one visit of every (row block, column block) tile.


def to_blocks(emb: jax.Array, block_size: int) -> tuple[jax.Array, jax.Array | None]:
  """`[n, D]` -> (`[n_blocks, block, D]` zero-padded, valid mask `[n_blocks, block]`).

  The mask is None when block_size divides n, so that tiles skip masking altogether.
  """
  n, dim = emb.shape
  n_blocks = -(-n // block_size)
  pad = n_blocks * block_size - n
  if not pad:
    return emb.reshape(n_blocks, block_size, dim), None
  emb = jnp.pad(emb, ((0, pad), (0, 0)))
  valid = (jnp.arange(n_blocks * block_size) < n).reshape(n_blocks, block_size)
  return emb.reshape(n_blocks, block_size, dim), valid


def from_blocks(blocks: jax.Array, n: int) -> jax.Array:
  """`[n_blocks, block, ...]` -> `[n, ...]` (drops the padding)."""
  return blocks.reshape((-1,) + blocks.shape[2:])[:n]


def tile_logits(u_block: jax.Array, v_block: jax.Array, inv_temperature: jax.Array) -> jax.Array:
  """`[bu, D] x [bv, D]` -> `[bu, bv]` logits, accumulated in the compute dtype."""
  dtype = inv_temperature.dtype
  sim = jnp.einsum("id,jd->ij", u_block, v_block, preferred_element_type=dtype)
  return sim * inv_temperature


def tile_scan(tile_fn: Callable, u_blocks, v_blocks, row_xs, col_xs, row_states, col_states):
  """Visits every (row block, column block) tile once, row blocks outermost.

  Args:
    tile_fn: `(u_block, v_block, row_x, col_x, row_state, col_state) -> (row_state, col_state)`.
    u_blocks: `[nu, bu, D]` row embeddings.
    v_blocks: `[nv, bv, D]` column embeddings.
    row_xs: pytree with leading axis nu: read-only per-row-block inputs (masks, statistics).
    col_xs: pytree with leading axis nv: read-only per-column-block inputs.
    row_states: pytree with leading axis nu: per-row-block accumulators.
    col_states: pytree with leading axis nv: per-column-block accumulators.

  Returns:
    Updated (row_states, col_states).
  """

  def row_step(col_states, row_inputs):
    u_block, row_x, row_state = row_inputs

    def col_step(row_state, col_inputs):
      v_block, col_x, col_state = col_inputs
      return tile_fn(u_block, v_block, row_x, col_x, row_state, col_state)

    row_state, col_states = jax.lax.scan(col_step, row_state, (v_blocks, col_xs, col_states))
    return col_states, row_state

  col_states, row_states = jax.lax.scan(row_step, col_states, (u_blocks, row_xs, row_states))
  return row_states, col_states


def masked(x: jax.Array, row_valid, col_valid, fill) -> jax.Array:
  """`x` with entries outside the valid rows/columns (masks `[bu]`, `[bv]` or None) = fill."""
  if row_valid is not None:
    x = jnp.where(row_valid[:, None], x, fill)
  if col_valid is not None:
    x = jnp.where(col_valid[None, :], x, fill)
  return x


def tile_trace(x: jax.Array, row_valid, on_diagonal) -> jax.Array:
  """Sum of the valid diagonal of a square tile `x` if `on_diagonal`, else 0."""
  diag = jnp.diagonal(x)
  if row_valid is not None:
    diag = jnp.where(row_valid, diag, 0)
  return jnp.where(on_diagonal, jnp.sum(diag), 0)


# --------------------------------------------------------------------------------------------
# InfoNCE: row / column log-sum-exp of U V^T / t, and the gradient pass that consumes them.


# An exp() argument below -_SHARED_EXP_RANGE is dropped by the shared-shift fast paths; the
# lost terms are then below exp(-87 + 40) of the kept ones (float32 underflows near exp(-87)).
_SHARED_EXP_RANGE = 40.0


def _tile_lse(x, row_valid, col_valid):
  """Row and column log-sum-exp of one masked tile `x` `[bu, bv]`.

  Fast path: one exp per entry, shared by both directions, shifted by the tile's maximum.
  When a row or column of the tile sits more than _SHARED_EXP_RANGE below that maximum (its
  sum would lose precision to underflow) it falls back to two exps, each direction shifted
  by its own maxima. Logits of L2-normalised embeddings span at most 2 / temperature, so the
  fallback runs only for temperatures under 0.05.
  """
  m = jnp.max(x)
  e = jnp.exp(x - m)
  row_sum, col_sum = jnp.sum(e, axis=1), jnp.sum(e, axis=0)
  smallest = jnp.minimum(
      jnp.min(row_sum if row_valid is None else jnp.where(row_valid, row_sum, 1)),
      jnp.min(col_sum if col_valid is None else jnp.where(col_valid, col_sum, 1)))
  shared = smallest > np.exp(-_SHARED_EXP_RANGE)
  return jax.lax.cond(
      shared,
      lambda: (m + jnp.log(row_sum), m + jnp.log(col_sum)),
      lambda: (jax.nn.logsumexp(x, axis=1), jax.nn.logsumexp(x, axis=0)))


def lse_pass(u_blocks, u_valid, v_blocks, v_valid, inv_temperature, row_lse, col_lse,
             diag_sum, has_diagonal=True):
  """Folds the tiles of `x = U V^T * inv_temperature` into running row/column log-sum-exp.

  Args:
    u_blocks, u_valid: `[nu, b, D]`, `[nu, b]` from `to_blocks`.
    v_blocks, v_valid: `[nv, b, D]`, `[nv, b]`.
    inv_temperature: scalar in the compute dtype.
    row_lse: `[nu, b]` running row log-sum-exp (-inf to start).
    col_lse: `[nv, b]` running column log-sum-exp.
    diag_sum: `[nu]` running sum of the positives' logits x_ii.
    has_diagonal: (bool scalar) whether U and V hold the same pairs, i.e. tile (k, k)
      carries positives. The positives are read off the tiles themselves so that they are
      bit-identical to the x_ii inside the LSE, which keeps the cancellation in
      dL/dtemperature exact for well-fitted pairs.

  Returns:
    Updated (row_lse, col_lse, diag_sum); padded entries of the LSE hold garbage.
  """
  # A finite fill: a fully padded row gets a finite (ignored) LSE rather than NaN.
  fill = jnp.finfo(inv_temperature.dtype).min

  def tile_fn(u_block, v_block, row_x, col_x, row_state, col_lse):
    (row_valid, row_index), (col_valid, col_index) = row_x, col_x
    row_lse, diag_sum = row_state
    x = tile_logits(u_block, v_block, inv_temperature)
    diag_sum = diag_sum + tile_trace(x, row_valid, has_diagonal & (row_index == col_index))
    x = masked(x, row_valid, col_valid, fill)
    tile_row_lse, tile_col_lse = _tile_lse(x, row_valid, col_valid)
    row_lse = jnp.logaddexp(row_lse, tile_row_lse)
    col_lse = jnp.logaddexp(col_lse, tile_col_lse)
    return (row_lse, diag_sum), col_lse

  (row_lse, diag_sum), col_lse = tile_scan(
      tile_fn, u_blocks, v_blocks, (u_valid, jnp.arange(len(u_blocks))),
      (v_valid, jnp.arange(len(v_blocks))), (row_lse, diag_sum), col_lse)
  return row_lse, col_lse, diag_sum


def softmax_grad_pass(u_blocks, u_valid, row_lse, v_blocks, v_valid, col_lse, inv_temperature,
                      weight, du, dv):
  """Accumulates the off-diagonal part of the symmetric InfoNCE gradient, tile by tile.

  With x = U V^T * inv_temperature and P_ij = weight * (exp(x_ij - l_i) + exp(x_ij - c_j)):
  du += P V, dv += P^T U (before the inv_temperature factor). sum_ij P_ij x_ij, which the
  temperature gradient needs, is inv_temperature * sum_i <u_i, du_i> once all tiles are in.

  Args:
    u_blocks, u_valid, row_lse: `[nu, b, D]`, `[nu, b]`, `[nu, b]`.
    v_blocks, v_valid, col_lse: `[nv, b, D]`, `[nv, b]`, `[nv, b]`.
    inv_temperature, weight: scalars in the compute dtype.
    du: `[nu, b, D]`, dv: `[nv, b, D]` accumulators.

  Returns:
    Updated (du, dv).
  """

  def tile_fn(u_block, v_block, row_x, col_x, du_block, dv_block):
    (row_valid, l), (col_valid, c) = row_x, col_x
    x = tile_logits(u_block, v_block, inv_temperature)
    l = l if row_valid is None else jnp.where(row_valid, l, -jnp.inf)
    c = c if col_valid is None else jnp.where(col_valid, c, -jnp.inf)
    # x_ij <= l_i and x_ij <= c_j, so exp(x - m) <= 1 for m = max(l, c); one exp then serves
    # both softmaxes through per-row and per-column factors exp(m - l_i), exp(m - c_j),
    # unless some l_i or c_j lies too far below m for those factors to stay exact.
    m = jnp.maximum(jnp.max(l), jnp.max(c))
    shared = jnp.maximum(m - jnp.min(jnp.where(jnp.isfinite(l), l, m)),
                         m - jnp.min(jnp.where(jnp.isfinite(c), c, m))) < _SHARED_EXP_RANGE
    p = jax.lax.cond(
        shared,
        lambda: jnp.exp(x - m) * (weight * (jnp.exp(m - l)[:, None] + jnp.exp(m - c)[None, :])),
        lambda: weight * (jnp.exp(x - l[:, None]) + jnp.exp(x - c[None, :])))
    p = masked(p, row_valid, col_valid, 0)
    dtype = p.dtype
    du_block = du_block + jnp.einsum("ij,jd->id", p, v_block, preferred_element_type=dtype)
    dv_block = dv_block + jnp.einsum("ij,id->jd", p, u_block, preferred_element_type=dtype)
    return du_block, dv_block

  return tile_scan(tile_fn, u_blocks, v_blocks, (u_valid, row_lse), (v_valid, col_lse), du, dv)


# --------------------------------------------------------------------------------------------
# Sigmoid loss: sum of softplus over the tiles, and the gradient pass (no row statistics).


def softplus_pass(u_blocks, u_valid, v_blocks, v_valid, inv_temperature, bias, acc,
                  has_diagonal=True):
  """Adds sum_ij softplus(x_ij + bias) and sum_i x_ii over the tiles of x = U V^T / t.

  Args:
    u_blocks, u_valid: `[nu, b, D]`, `[nu, b]` from `to_blocks`.
    v_blocks, v_valid: `[nv, b, D]`, `[nv, b]`.
    inv_temperature, bias: scalars in the compute dtype.
    acc: `[nu, 2]` per-row-block accumulator of (softplus sum, positives' logit sum).
    has_diagonal: (bool scalar) whether tile (k, k) carries the positives (see `lse_pass`).

  Returns:
    Updated acc `[nu, 2]`.
  """

  def tile_fn(u_block, v_block, row_x, col_x, acc, col_state):
    (row_valid, row_index), (col_valid, col_index) = row_x, col_x
    x = tile_logits(u_block, v_block, inv_temperature)
    softplus_sum = jnp.sum(masked(jax.nn.softplus(x + bias), row_valid, col_valid, 0))
    trace = tile_trace(x, row_valid, has_diagonal & (row_index == col_index))
    return acc + jnp.stack([softplus_sum, trace]), col_state

  acc, _ = tile_scan(tile_fn, u_blocks, v_blocks, (u_valid, jnp.arange(len(u_blocks))),
                     (v_valid, jnp.arange(len(v_blocks))), acc, None)
  return acc


def sigmoid_grad_pass(u_blocks, u_valid, v_blocks, v_valid, inv_temperature, bias, weight,
                      du, dv, stats):
  """Accumulates the off-diagonal part of the sigmoid-loss gradient, tile by tile.

  With x = U V^T * inv_temperature and P_ij = weight * sigmoid(x_ij + bias): du += P V,
  dv += P^T U, stats += (sum P, sum P * x) (all before the inv_temperature factor).

  Args:
    u_blocks, u_valid: `[nu, b, D]`, `[nu, b]`.
    v_blocks, v_valid: `[nv, b, D]`, `[nv, b]`.
    inv_temperature, bias, weight: scalars in the compute dtype.
    du: `[nu, b, D]`, dv: `[nv, b, D]`, stats: `[nu, 2]` accumulators.

  Returns:
    Updated (du, dv, stats).
  """

  def tile_fn(u_block, v_block, row_valid, col_valid, row_state, dv_block):
    du_block, stats = row_state
    x = tile_logits(u_block, v_block, inv_temperature)
    p = masked(weight * jax.nn.sigmoid(x + bias), row_valid, col_valid, 0)
    dtype = p.dtype
    du_block = du_block + jnp.einsum("ij,jd->id", p, v_block, preferred_element_type=dtype)
    dv_block = dv_block + jnp.einsum("ij,id->jd", p, u_block, preferred_element_type=dtype)
    stats = stats + jnp.stack([jnp.sum(p), jnp.sum(p * x)])
    return (du_block, stats), dv_block

  (du, stats), dv = tile_scan(tile_fn, u_blocks, v_blocks, u_valid, v_valid, (du, stats), dv)
  return du, dv, stats


def sigmoid_input_grads(image_emb, text_emb, inv_temperature, weight, du, dv, stats, diag_x, n):
  """Turns the accumulated off-diagonal sums into (d_image, d_text, d_temperature, d_bias).

  `diag_x` is sum_i x_ii and `n` the number of diagonal (positive) pairs that `weight` covers.
  """
  dtype = inv_temperature.dtype
  d_image = (du - weight * text_emb.astype(dtype)) * inv_temperature
  d_text = (dv - weight * image_emb.astype(dtype)) * inv_temperature
  d_bias = stats[0] - weight * n
  d_temperature = -(stats[1] - weight * diag_x) * inv_temperature
  return d_image, d_text, d_temperature, d_bias
