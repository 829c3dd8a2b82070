"""Symmetric InfoNCE (CLIP) loss: plain, and blockwise without the N x N logit matrix.

The blockwise form follows Inf-CL (arXiv 2410.17243) in its one-pass symmetric variant: with
x_ij = <u_i, v_j> / temperature, row log-sum-exp l_i = LSE_j x_ij and column log-sum-exp
c_j = LSE_i x_ij,

  L = (1 / 2N) [sum_i (l_i - x_ii) + sum_j (c_j - x_jj)].

The forward pass visits every [block, block] tile once and keeps only l and c; the backward
pass recomputes each tile and uses

  dL/dx_ij = (exp(x_ij - l_i) + exp(x_ij - c_j)) / 2N - delta_ij / N,

so memory is O(N * D + block^2) instead of O(N^2).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmjax.losses._tiling import (check_block_size, check_embeddings, check_scalar,
                                  compute_dtype, from_blocks, lse_pass, softmax_grad_pass,
                                  to_blocks)


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, temperature, *,
              block_size: int | None = None) -> jax.Array:
  """Symmetric InfoNCE loss of CLIP.

  L = (CE over rows + CE over columns) / 2 of the logits S / temperature, S = image_emb @
  text_emb.T, where pair i (row i, column i) is the positive.

  Args:
    image_emb: `[N, D]` image embeddings, already L2-normalised (any float dtype).
    text_emb: `[N, D]` text embeddings, already L2-normalised.
    temperature: scalar (may be traced; it gets a gradient). CLIP's learnable logit scale
      is 1 / temperature.
    block_size: None for the plain version (materialises the `[N, N]` logits); an int for the
      blockwise version, which keeps memory at O(N * D + block_size^2) and recomputes tiles in
      the backward pass. Any N works (the last block is padded and masked).

  Returns:
    Scalar loss, float32 for float32/bf16 inputs (float64 for float64).
  """
  check_embeddings(image_emb, text_emb, "clip_loss")
  check_scalar(temperature, "temperature", "clip_loss")
  check_block_size(block_size, "clip_loss")
  dtype = compute_dtype(image_emb, text_emb)
  temperature = jnp.asarray(temperature).astype(dtype)
  if block_size is None:
    return _clip_loss_plain(image_emb, text_emb, temperature)
  return _clip_loss_blockwise(int(block_size), image_emb, text_emb, temperature)


def _clip_loss_plain(image_emb, text_emb, temperature):
  dtype = temperature.dtype
  logits = jnp.einsum("id,jd->ij", image_emb, text_emb, preferred_element_type=dtype)
  logits = logits / temperature
  diag = jnp.diagonal(logits)
  row_loss = jax.nn.logsumexp(logits, axis=1) - diag
  col_loss = jax.nn.logsumexp(logits, axis=0) - diag
  return (jnp.mean(row_loss) + jnp.mean(col_loss)) / 2


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _clip_loss_blockwise(block_size, image_emb, text_emb, temperature):
  return _clip_blockwise_fwd(block_size, image_emb, text_emb, temperature)[0]


def _clip_blockwise_fwd(block_size, image_emb, text_emb, temperature):
  n = image_emb.shape[0]
  block = min(block_size, n)
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, u_valid = to_blocks(image_emb, block)
  v_blocks, v_valid = to_blocks(text_emb, block)
  init = jnp.full(u_blocks.shape[:2], -jnp.inf, dtype)
  row_lse, col_lse, diag_sum = lse_pass(u_blocks, u_valid, v_blocks, v_valid, inv_temperature,
                                        init, init, jnp.zeros(len(u_blocks), dtype))
  row_lse, col_lse, diag_sum = from_blocks(row_lse, n), from_blocks(col_lse, n), jnp.sum(diag_sum)
  loss = (jnp.sum(row_lse) + jnp.sum(col_lse) - 2 * diag_sum) / (2 * n)
  return loss, (image_emb, text_emb, temperature, row_lse, col_lse, diag_sum)


def _clip_blockwise_bwd(block_size, residuals, g):
  image_emb, text_emb, temperature, row_lse, col_lse, diag_sum = residuals
  n = image_emb.shape[0]
  block = min(block_size, n)
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, u_valid = to_blocks(image_emb, block)
  v_blocks, v_valid = to_blocks(text_emb, block)
  l_blocks, _ = to_blocks(row_lse[:, None], block)
  c_blocks, _ = to_blocks(col_lse[:, None], block)
  zeros = jnp.zeros(u_blocks.shape, dtype)
  du, dv = softmax_grad_pass(
      u_blocks, u_valid, l_blocks[..., 0], v_blocks, v_valid, c_blocks[..., 0],
      inv_temperature, g / (2 * n), zeros, zeros)
  px = jnp.sum(u_blocks.astype(dtype) * du) * inv_temperature
  # The -delta_ij / N part of the gradient, applied without visiting the diagonal tiles.
  diag_weight = g / n
  d_image = (from_blocks(du, n) - diag_weight * text_emb.astype(dtype)) * inv_temperature
  d_text = (from_blocks(dv, n) - diag_weight * image_emb.astype(dtype)) * inv_temperature
  # x = S / t, so dL/dt = -sum_ij G_ij x_ij / t.
  d_temperature = -(jnp.sum(px) - diag_weight * diag_sum) * inv_temperature
  return (d_image.astype(image_emb.dtype), d_text.astype(text_emb.dtype),
          d_temperature.astype(temperature.dtype))


_clip_loss_blockwise.defvjp(_clip_blockwise_fwd, _clip_blockwise_bwd)
