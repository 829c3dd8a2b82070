"""GradCache: a contrastive training step whose batch is not bounded by activation memory.

A contrastive loss couples every example with every other, so the batch cannot simply be
split into micro-batches with summed gradients. GradCache (Gao et al., 2021) splits it anyway:

1. embed every chunk of the batch without keeping activations (a plain forward pass);
2. take the loss and its gradient w.r.t. the `[N, D]` embeddings (cheap: the encoders are
   not involved; use a blockwise loss here when N is large);
3. re-run each chunk's encoder under `jax.vjp` and pull the cached embedding gradient back
   to the parameters, accumulating over chunks.

Encoder activation memory is one chunk's; the cost is one extra forward pass.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def grad_cached_value_and_grad(embed_fn: Callable[[PyTree, PyTree, jax.Array | None], PyTree],
                               loss_fn: Callable[[PyTree, PyTree], Any], params: PyTree,
                               batch: PyTree, num_chunks: int, rng: jax.Array | None = None, *,
                               has_aux: bool = False):
  """`jax.value_and_grad` of a contrastive loss, computed one chunk of the batch at a time.

  Args:
    embed_fn: `embed_fn(params, chunk, rng) -> embeddings`, where `chunk` is `batch` with
      leading dimension b = N / num_chunks and `embeddings` is a pytree of `[b, ...]` arrays,
      e.g. `(image_emb [b, D], text_emb [b, D])`. It must be deterministic given its `rng`
      (it is run twice per chunk, with the same rng).
    loss_fn: `loss_fn(embeddings, params) -> loss` (or `(loss, aux)` with `has_aux`), where
      `embeddings` is embed_fn's pytree with the chunks concatenated back to `[N, ...]`, in
      batch order. Parameters used by the loss itself (temperature / logit scale, SigLIP
      bias) are read from `params` here, so they get their gradient too.
    params: the parameter pytree to differentiate.
    batch: pytree of `[N, ...]` arrays (N divisible by num_chunks).
    num_chunks: how many chunks to embed one after another.
    rng: optional PRNG key; chunk c gets `jax.random.fold_in(rng, c)` (None passes None).
    has_aux: whether loss_fn returns `(loss, aux)`.

  Returns:
    `(loss, grads)`, or `((loss, aux), grads)` with `has_aux`: the same as
    `jax.value_and_grad(lambda p: loss_fn(concat_c(embed_fn(p, chunk_c, rng_c)), p))(params)`.
  """
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError("grad_cached_value_and_grad: batch has no arrays")
  n = leaves[0].shape[0] if leaves[0].ndim else None
  if n is None or any(leaf.ndim == 0 or leaf.shape[0] != n for leaf in leaves):
    raise ValueError("grad_cached_value_and_grad: every batch array needs the same leading "
                     f"batch dimension, got shapes {[leaf.shape for leaf in leaves]}")
  if not isinstance(num_chunks, int) or num_chunks < 1 or n % num_chunks:
    raise ValueError(f"grad_cached_value_and_grad: num_chunks must be a positive int dividing "
                     f"the batch size {n}, got {num_chunks!r}")
  chunk_size = n // num_chunks
  split = lambda x: x.reshape((num_chunks, chunk_size) + x.shape[1:])
  merge = lambda x: x.reshape((n,) + x.shape[2:])
  chunks = jax.tree.map(split, batch)
  rngs = None if rng is None else jax.vmap(jax.random.fold_in, (None, 0))(
      rng, jnp.arange(num_chunks))

  # 1. Embed chunk by chunk. Nothing is differentiated here, so no activations are kept.
  def embed_chunk(_, inputs):
    chunk, chunk_rng = inputs
    return None, embed_fn(params, chunk, chunk_rng)

  _, embeddings = jax.lax.scan(embed_chunk, None, (chunks, rngs))
  embeddings = jax.tree.map(merge, embeddings)

  # 2. The loss and its gradient w.r.t. the embeddings and the loss's own parameters.
  value, (d_embeddings, grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=has_aux)(
      embeddings, params)

  # 3. Re-run each chunk and pull its slice of the cached gradient back to the parameters.
  def backprop_chunk(grads, inputs):
    chunk, chunk_rng, d_chunk = inputs
    _, pullback = jax.vjp(lambda p: embed_fn(p, chunk, chunk_rng), params)
    (chunk_grads,) = pullback(d_chunk)
    return jax.tree.map(jnp.add, grads, chunk_grads), None

  grads, _ = jax.lax.scan(backprop_chunk, grads,
                          (chunks, rngs, jax.tree.map(split, d_embeddings)))
  return value, grads
