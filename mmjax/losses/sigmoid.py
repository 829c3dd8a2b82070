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

from mmjax.losses._tiling import (check_block_size, check_embeddings, check_scalar,
                                  compute_dtype, from_blocks, sigmoid_grad_pass,
                                  sigmoid_input_grads, softplus_pass, to_blocks)


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
