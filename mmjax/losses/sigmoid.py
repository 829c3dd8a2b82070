"""Sigmoid (SigLIP) loss: plain, and blockwise without the N x N logit matrix.

With y_ij = <u_i, v_j> / temperature + bias and z_ij = +1 on the diagonal, -1 elsewhere,

  L = -(1/N) sum_ij log sigmoid(z_ij y_ij) = (1/N) [sum_ij softplus(y_ij) - sum_i y_ii],

and dL/dy_ij = (sigmoid(y_ij) - delta_ij) / N needs no row statistics, so the blockwise
backward simply recomputes each tile.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmjax.losses.contrastive import (check_block_size, check_embeddings, check_scalar,
                                      compute_dtype, from_blocks, masked, tile_logits, tile_scan,
                                      tile_trace, to_blocks)


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


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, temperature, bias, *,
                block_size: int | None = None) -> jax.Array:
  """Sigmoid loss of SigLIP: -mean_i sum_j log sigmoid(z_ij (S_ij / temperature + bias)).

  S = image_emb @ text_emb.T; z_ij = +1 for i == j (the positive pair), -1 otherwise.

  Args:
    image_emb: `[N, D]` image embeddings, already L2-normalised (any float dtype).
    text_emb: `[N, D]` text embeddings, already L2-normalised.
    temperature: scalar (may be traced; it gets a gradient). SigLIP's logit scale is
      1 / temperature (initialised to 10, i.e. temperature 0.1).
    bias: scalar logit bias (may be traced; SigLIP initialises it to -10).
    block_size: None for the plain version (materialises `[N, N]`); an int for the blockwise
      version with O(N * D + block_size^2) memory that recomputes tiles in the backward pass.

  Returns:
    Scalar loss, float32 for float32/bf16 inputs (float64 for float64).
  """
  check_embeddings(image_emb, text_emb, "siglip_loss")
  check_scalar(temperature, "temperature", "siglip_loss")
  check_scalar(bias, "bias", "siglip_loss")
  check_block_size(block_size, "siglip_loss")
  dtype = compute_dtype(image_emb, text_emb)
  temperature = jnp.asarray(temperature).astype(dtype)
  bias = jnp.asarray(bias).astype(dtype)
  if block_size is None:
    return _siglip_loss_plain(image_emb, text_emb, temperature, bias)
  return _siglip_loss_blockwise(int(block_size), image_emb, text_emb, temperature, bias)


def _siglip_loss_plain(image_emb, text_emb, temperature, bias):
  n = image_emb.shape[0]
  dtype = temperature.dtype
  logits = jnp.einsum("id,jd->ij", image_emb, text_emb, preferred_element_type=dtype)
  logits = logits / temperature + bias
  labels = 2 * jnp.eye(n, dtype=dtype) - 1
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _siglip_loss_blockwise(block_size, image_emb, text_emb, temperature, bias):
  return _siglip_blockwise_fwd(block_size, image_emb, text_emb, temperature, bias)[0]


def _siglip_blockwise_fwd(block_size, image_emb, text_emb, temperature, bias):
  n = image_emb.shape[0]
  block = min(block_size, n)
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, u_valid = to_blocks(image_emb, block)
  v_blocks, v_valid = to_blocks(text_emb, block)
  acc = softplus_pass(u_blocks, u_valid, v_blocks, v_valid, inv_temperature, bias,
                      jnp.zeros((len(u_blocks), 2), dtype))
  softplus_sum, diag_x = jnp.sum(acc, axis=0)
  loss = (softplus_sum - diag_x - n * bias) / n
  return loss, (image_emb, text_emb, temperature, bias, diag_x)


def _siglip_blockwise_bwd(block_size, residuals, g):
  image_emb, text_emb, temperature, bias, diag_x = residuals
  n = image_emb.shape[0]
  block = min(block_size, n)
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, u_valid = to_blocks(image_emb, block)
  v_blocks, v_valid = to_blocks(text_emb, block)
  zeros = jnp.zeros(u_blocks.shape, dtype)
  weight = g / n
  du, dv, stats = sigmoid_grad_pass(u_blocks, u_valid, v_blocks, v_valid, inv_temperature, bias,
                                    weight, zeros, zeros, jnp.zeros((len(u_blocks), 2), dtype))
  d_image, d_text, d_temperature, d_bias = sigmoid_input_grads(
      image_emb, text_emb, inv_temperature, weight, from_blocks(du, n), from_blocks(dv, n),
      jnp.sum(stats, axis=0), diag_x, n)
  return (d_image.astype(image_emb.dtype), d_text.astype(text_emb.dtype),
          d_temperature.astype(temperature.dtype), d_bias.astype(bias.dtype))


_siglip_loss_blockwise.defvjp(_siglip_blockwise_fwd, _siglip_blockwise_bwd)
