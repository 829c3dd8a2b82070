"""Ring versions of clip_loss and siglip_loss for use inside `jax.shard_map`.

Each device holds its local `[b, D]` shard of the image and text embeddings (N = b * P over
the P devices on `axis_name`). Text shards travel around the ring with `lax.ppermute`; each
device folds (local rows) x (visiting column shard) tiles into running statistics, so no
device ever holds more than a few `[b, D]` shards and one `[block, block]` tile.

Autodiff through such a loop would store every visiting shard for the backward pass
(O(N * D) per device, or the O(b * N) logits that open_clip's SigLIP ring keeps). Both losses
here are `jax.custom_vjp`s whose backward circulates the shards again, carrying each shard's
gradient accumulator along with it, so per-device memory stays O(b * D + block^2).

- CLIP: one direction. The forward pass carries each text shard's partial column
  log-sum-exp with it; after P - 1 hops it is one hop from home.
- SigLIP: needs no statistics, so shards go both ways (left and right) and the P - 1 visits
  take ceil((P - 1) / 2) steps.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mmjax.losses._tiling import (check_block_size, check_embeddings, check_scalar,
                                  compute_dtype, from_blocks, lse_pass, sigmoid_grad_pass,
                                  sigmoid_input_grads, softmax_grad_pass, softplus_pass,
                                  to_blocks)


# --------------------------------------------------------------------------------------------
# Ring plumbing.


def _shift(tree, axis_name, offset: int):
  """Sends every device's `tree` to the device `offset` places further along the ring."""
  size = lax.axis_size(axis_name)
  if offset % size == 0:
    return tree
  perm = [(i, (i + offset) % size) for i in range(size)]
  return jax.tree.map(lambda x: lax.ppermute(x, axis_name, perm), tree)


def _axes(axis_name) -> tuple:
  return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def _vma(x) -> frozenset:
  """Mesh axes over which `x` varies inside shard_map (empty when vma checks are off)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", frozenset()))


def _like(x, reference):
  """Marks `x` as varying over the same mesh axes as `reference` (shard_map's check_vma)."""
  missing = tuple(_vma(reference) - _vma(x))
  return lax.pcast(x, missing, to="varying") if missing else x


def _replicated_total(local, axis_name, like_input, like_shard):
  """Cotangent of a replicated input from this device's contribution `local`.

  If the input is invariant over the ring axis (the usual case: one temperature for all
  devices) while the shards vary, the cotangent is the sum over the ring. A per-device input
  (or a shard_map without vma checks, whose transpose already sums) takes its own share.
  """
  axes = _axes(axis_name)
  sum_axes = tuple(a for a in axes if a in _vma(like_shard) and a not in _vma(like_input))
  return lax.psum(local, sum_axes) if sum_axes else local


def _full_cotangent(g, axis_name, like_shard):
  """The loss cotangent. Without vma checks shard_map hands each device 1/P of the cotangent
  of a `P()` output (it cannot know the output is replicated), so it is summed back."""
  if any(a in _vma(like_shard) for a in _axes(axis_name)):
    return g
  return lax.psum(g, axis_name)


def _ring_size_and_block(image_emb, axis_name, block_size):
  size = lax.axis_size(axis_name)
  shard = image_emb.shape[0]
  block = shard if block_size is None else min(block_size, shard)
  return size, shard, block


def _check(name, image_emb, text_emb, temperature, block_size, axis_name, bias=0.0):
  """Validates the arguments; returns axis_name in hashable form."""
  if isinstance(axis_name, list):
    axis_name = tuple(axis_name)
  try:
    lax.axis_size(axis_name)
  except NameError as e:
    raise ValueError(f"{name}: axis_name {axis_name!r} is not a mesh axis in scope; call it "
                     "inside jax.shard_map over that axis") from e
  check_embeddings(image_emb, text_emb, name)
  check_scalar(temperature, "temperature", name)
  check_scalar(bias, "bias", name)
  check_block_size(block_size, name)
  return axis_name


# --------------------------------------------------------------------------------------------
# CLIP.


def clip_loss_sharded(image_emb: jax.Array, text_emb: jax.Array, temperature, *, axis_name,
                      block_size: int | None = None) -> jax.Array:
  """`clip_loss` over the whole batch, from inside `shard_map` over `axis_name`.

  Args:
    image_emb: `[b, D]` this device's L2-normalised image embeddings (global row
      `index * b + i`, where `index` is the device's position along `axis_name`).
    text_emb: `[b, D]` this device's text embeddings, the positives of `image_emb`.
    temperature: scalar, normally replicated (in_specs `P()`); it gets its gradient.
    axis_name: the mesh axis (or tuple of axes) the batch is split over.
    block_size: tile size of the per-step `[b, b]` products; None uses one `[b, b]` tile.

  Returns:
    The scalar loss over all N = b * P pairs, identical on every device (use out_specs `P()`).
  """
  axis_name = _check("clip_loss_sharded", image_emb, text_emb, temperature, block_size,
                     axis_name)
  dtype = compute_dtype(image_emb, text_emb)
  temperature = jnp.asarray(temperature).astype(dtype)
  return _clip_ring(axis_name, block_size, image_emb, text_emb, temperature)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _clip_ring(axis_name, block_size, image_emb, text_emb, temperature):
  return _clip_ring_fwd(axis_name, block_size, image_emb, text_emb, temperature)[0]


def _clip_ring_fwd(axis_name, block_size, image_emb, text_emb, temperature):
  size, shard, block = _ring_size_and_block(image_emb, axis_name, block_size)
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, valid = to_blocks(image_emb, block)
  v_blocks, _ = to_blocks(text_emb, block)
  init = _like(jnp.full(u_blocks.shape[:2], -jnp.inf, dtype), u_blocks)
  diag = _like(jnp.zeros(len(u_blocks), dtype), u_blocks)
  # Own shard first: its tiles (k, k) hold the positives.
  row_lse, col_lse, diag = lse_pass(u_blocks, valid, v_blocks, valid, inv_temperature, init,
                                    _like(init, v_blocks), diag)

  def visit(carry, _):
    row_lse, v_visiting, col_visiting = carry
    v_visiting, col_visiting = _shift((v_visiting, col_visiting), axis_name, 1)
    row_lse, col_visiting, _ = lse_pass(u_blocks, valid, v_visiting, valid, inv_temperature,
                                        row_lse, col_visiting, diag, has_diagonal=False)
    return (row_lse, v_visiting, col_visiting), None

  (row_lse, _, col_lse), _ = lax.scan(visit, (row_lse, v_blocks, col_lse), None,
                                      length=size - 1)
  col_lse = _shift(col_lse, axis_name, 1)  # home: it has visited every device
  row_lse, col_lse = from_blocks(row_lse, shard), from_blocks(col_lse, shard)
  local = jnp.sum(row_lse) + jnp.sum(col_lse) - 2 * jnp.sum(diag)
  loss = lax.psum(local, axis_name) / (2 * shard * size)
  return loss, (image_emb, text_emb, temperature, row_lse, col_lse, jnp.sum(diag))


def _clip_ring_bwd(axis_name, block_size, residuals, g):
  image_emb, text_emb, temperature, row_lse, col_lse, diag_sum = residuals
  g = _full_cotangent(g, axis_name, image_emb)
  size, shard, block = _ring_size_and_block(image_emb, axis_name, block_size)
  n = shard * size
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, valid = to_blocks(image_emb, block)
  v_blocks, _ = to_blocks(text_emb, block)
  l_blocks = to_blocks(row_lse[:, None], block)[0][..., 0]
  c_blocks = to_blocks(col_lse[:, None], block)[0][..., 0]
  weight = g / (2 * n)
  zeros = _like(jnp.zeros(u_blocks.shape, dtype), u_blocks)
  du, dv = softmax_grad_pass(u_blocks, valid, l_blocks, v_blocks, valid, c_blocks,
                             inv_temperature, weight, zeros, _like(zeros, v_blocks))

  def visit(carry, _):
    du, visiting = carry
    v_visiting, c_visiting, dv_visiting = _shift(visiting, axis_name, 1)
    du, dv_visiting = softmax_grad_pass(u_blocks, valid, l_blocks, v_visiting, valid,
                                        c_visiting, inv_temperature, weight, du, dv_visiting)
    return (du, (v_visiting, c_visiting, dv_visiting)), None

  (du, (_, _, dv)), _ = lax.scan(visit, (du, (v_blocks, c_blocks, dv)), None, length=size - 1)
  # sum_ij P_ij x_ij over this device's rows, from du = P V (see softmax_grad_pass).
  px = jnp.sum(u_blocks.astype(dtype) * du) * inv_temperature
  dv = _shift(dv, axis_name, 1)
  diag_weight = g / n
  d_image = (from_blocks(du, shard) - diag_weight * text_emb.astype(dtype)) * inv_temperature
  d_text = (from_blocks(dv, shard) - diag_weight * image_emb.astype(dtype)) * inv_temperature
  # x = S / t: dL/dt = -sum_ij G_ij x_ij / t, over this device's rows.
  gx = _replicated_total(jnp.sum(px) - diag_weight * diag_sum, axis_name, temperature, image_emb)
  d_temperature = -gx * inv_temperature
  return (d_image.astype(image_emb.dtype), d_text.astype(text_emb.dtype),
          d_temperature.astype(temperature.dtype))


_clip_ring.defvjp(_clip_ring_fwd, _clip_ring_bwd)


# --------------------------------------------------------------------------------------------
# SigLIP.


def siglip_loss_sharded(image_emb: jax.Array, text_emb: jax.Array, temperature, bias, *,
                        axis_name, block_size: int | None = None) -> jax.Array:
  """`siglip_loss` over the whole batch, from inside `shard_map` over `axis_name`.

  Args:
    image_emb: `[b, D]` this device's L2-normalised image embeddings.
    text_emb: `[b, D]` this device's text embeddings, the positives of `image_emb`.
    temperature: scalar, normally replicated (in_specs `P()`); it gets its gradient.
    bias: scalar logit bias, normally replicated; it gets its gradient.
    axis_name: the mesh axis (or tuple of axes) the batch is split over.
    block_size: tile size of the per-step `[b, b]` products; None uses one `[b, b]` tile.

  Returns:
    The scalar loss over all N = b * P pairs, identical on every device (use out_specs `P()`).
  """
  axis_name = _check("siglip_loss_sharded", image_emb, text_emb, temperature, block_size,
                     axis_name, bias)
  dtype = compute_dtype(image_emb, text_emb)
  temperature = jnp.asarray(temperature).astype(dtype)
  bias = jnp.asarray(bias).astype(dtype)
  return _siglip_ring(axis_name, block_size, image_emb, text_emb, temperature, bias)


def _bidirectional_steps(size: int) -> tuple[int, int]:
  """(steps for the right-going stream, steps for the left-going one): together size - 1."""
  return size // 2, (size - 1) // 2


def _siglip_visits(axis_name, size, own_step, visit_step, state, v_blocks):
  """Runs `own_step` on the local text shard, then `visit_step` on every other shard.

  Text shards (with whatever travels with them, `v_blocks` being a pytree) go right and left
  at once; with P even, the right-going stream takes the one extra step. Returns the final
  state and the two streams' payloads (right, left) where they stopped.
  """
  state = own_step(state)
  right_steps, left_steps = _bidirectional_steps(size)

  def both(carry, _):
    state, right, left = carry
    right, left = _shift(right, axis_name, 1), _shift(left, axis_name, -1)
    state, right = visit_step(state, right)
    state, left = visit_step(state, left)
    return (state, right, left), None

  (state, right, left), _ = lax.scan(both, (state, v_blocks, v_blocks), None,
                                     length=left_steps)
  if right_steps > left_steps:
    right = _shift(right, axis_name, 1)
    state, right = visit_step(state, right)
  return state, right, left


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _siglip_ring(axis_name, block_size, image_emb, text_emb, temperature, bias):
  return _siglip_ring_fwd(axis_name, block_size, image_emb, text_emb, temperature, bias)[0]


def _siglip_ring_fwd(axis_name, block_size, image_emb, text_emb, temperature, bias):
  size, shard, block = _ring_size_and_block(image_emb, axis_name, block_size)
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, valid = to_blocks(image_emb, block)
  v_blocks, _ = to_blocks(text_emb, block)
  acc = _like(jnp.zeros((len(u_blocks), 2), dtype), u_blocks)

  def own_step(acc):
    return softplus_pass(u_blocks, valid, v_blocks, valid, inv_temperature, bias, acc)

  def visit_step(acc, v_visiting):
    acc = softplus_pass(u_blocks, valid, v_visiting, valid, inv_temperature, bias, acc,
                        has_diagonal=False)
    return acc, v_visiting

  acc, _, _ = _siglip_visits(axis_name, size, own_step, visit_step, acc, v_blocks)
  softplus_sum, diag_x = jnp.sum(acc, axis=0)
  n = shard * size
  loss = (lax.psum(softplus_sum - diag_x, axis_name) - n * bias) / n
  return loss, (image_emb, text_emb, temperature, bias, diag_x)


def _siglip_ring_bwd(axis_name, block_size, residuals, g):
  image_emb, text_emb, temperature, bias, diag_x = residuals
  g = _full_cotangent(g, axis_name, image_emb)
  size, shard, block = _ring_size_and_block(image_emb, axis_name, block_size)
  n = shard * size
  dtype = temperature.dtype
  inv_temperature = 1 / temperature
  u_blocks, valid = to_blocks(image_emb, block)
  v_blocks, _ = to_blocks(text_emb, block)
  weight = g / n
  zeros = _like(jnp.zeros(u_blocks.shape, dtype), u_blocks)
  state = (zeros, _like(zeros, v_blocks), _like(jnp.zeros((len(u_blocks), 2), dtype), u_blocks))

  def own_step(state):
    du, dv, stats = state
    return sigmoid_grad_pass(u_blocks, valid, v_blocks, valid, inv_temperature, bias, weight,
                             du, dv, stats)

  def visit_step(state, visiting):
    du, dv_own, stats = state
    v_visiting, dv_visiting = visiting
    du, dv_visiting, stats = sigmoid_grad_pass(u_blocks, valid, v_visiting, valid,
                                               inv_temperature, bias, weight, du, dv_visiting,
                                               stats)
    return (du, dv_own, stats), (v_visiting, dv_visiting)

  right_steps, left_steps = _bidirectional_steps(size)
  (du, dv, stats), (_, dv_right), (_, dv_left) = _siglip_visits(
      axis_name, size, own_step, visit_step, state, (v_blocks, zeros))
  # Each stream's accumulators stopped `steps` hops from home; one permutation each returns them.
  dv = dv + _shift(dv_right, axis_name, -right_steps) + _shift(dv_left, axis_name, left_steps)
  stats = jnp.sum(stats, axis=0)
  d_image, d_text, _, _ = sigmoid_input_grads(image_emb, text_emb, inv_temperature, weight,
                                              from_blocks(du, shard), from_blocks(dv, shard),
                                              stats, diag_x, shard)
  # Temperature and bias: this device's rows, summed over the ring when they are replicated.
  d_bias = _replicated_total(stats[0] - weight * shard, axis_name, bias, image_emb)
  d_temperature = -_replicated_total(stats[1] - weight * diag_x, axis_name, temperature,
                                     image_emb) * inv_temperature
  return (d_image.astype(image_emb.dtype), d_text.astype(text_emb.dtype),
          d_temperature.astype(temperature.dtype), d_bias.astype(bias.dtype))


_siglip_ring.defvjp(_siglip_ring_fwd, _siglip_ring_bwd)
