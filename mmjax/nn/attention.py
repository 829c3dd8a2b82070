"""The one multi-head attention of mmjax: self and cross, masks, KV cache, two kernels.

Every model (CLIP towers, decoders, UNet, fusion blocks) uses `MultiHeadAttention`; nothing
else in mmjax computes attention weights.

Layout of parameters (logical axis names in brackets):
  self-attention:  qkv  kernel [embed, 3, heads, head_dim]  (("embed", None, "heads", "kv"))
  cross-attention: query kernel [embed, heads, head_dim], kv kernel [embed_kv, 2, heads, head_dim]
  output:          out  kernel [heads, head_dim, embed]     (("heads", "kv", "embed"))
Fusing Q, K and V into one matmul is what makes the self-attention path fast on CPU (one large
GEMM instead of three small ones).
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers, kv_cache

Dtype = Any

ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def make_causal_mask(length: int) -> jax.Array:
  """Boolean mask `[1, 1, length, length]`, True where query i may attend to key j <= i."""
  idx = jnp.arange(length)
  return (idx[:, None] >= idx[None, :])[None, None]


def make_padding_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
  """Boolean mask `[B, 1, Tq, Tk]` from validity vectors `[B, Tq]` and `[B, Tk]`."""
  return (query_valid[:, :, None] & key_valid[:, None, :])[:, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of broadcastable boolean masks; None entries are ignored."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def attention_weights_einsum(query, key, mask, dtype):
  """Softmax attention probabilities `[B, H, Tq, Tk]` computed in float32."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None, *,
                          implementation: str = "einsum") -> jax.Array:
  """Scaled dot-product attention.

  Args:
    query: `[B, Tq, H, Dh]`.
    key: `[B, Tk, H, Dh]`.
    value: `[B, Tk, H, Dh]`.
    mask: boolean, broadcastable to `[B, H, Tq, Tk]`; True means "may attend".
    implementation: "einsum" (explicit, works everywhere), "xla" or "cudnn"
      (`jax.nn.dot_product_attention`; "cudnn" is the fused GPU kernel).

  Returns:
    `[B, Tq, H, Dh]` in the dtype of `query`.
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
  if implementation == "einsum":
    probs = attention_weights_einsum(query, key, mask, query.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (query.shape[0], query.shape[2], query.shape[1], key.shape[1]))
  return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=1.0,
                                      implementation=implementation)


class MultiHeadAttention(nn.Module):
  """Multi-head attention; self-attention when `inputs_kv` is None, else cross-attention.

  Attributes:
    num_heads: number of heads H.
    head_dim: per-head width Dh; default `embed_dim // num_heads`.
    out_features: output width; default the query width.
    dtype: compute dtype (e.g. bfloat16); params stay `param_dtype`. Softmax is float32.
    implementation: see `dot_product_attention`.
    decode: if True, self-attention keys/values go to a fixed-size cache in the "cache"
      collection (initialise it by calling the module once on a `[B, max_length, D]` input
      with `mutable=["cache"]`). Without `positions`, each call appends the next `Tq`
      positions at one shared `cache_index` (equal-length rows only) of `cached_key` /
      `cached_value` `[B, H, max_length, Dh]` (heads-major: the layout the attention GEMMs
      read, so no step copies the cache into it). With `positions` `[B, Tq]`, token t of row b
      is written to slot `positions[b, t]` of a `kv_cache.SlotKVCache` "kv" and attends to
      slots `<= positions[b, t]` of its own row (ragged prompts, beam search, whose reorders
      then move only the cache's slot table); that cache holds no shared index. This path
      always uses the einsum kernel.
      Cross-attention (`inputs_kv` given) with decode=True projects `inputs_kv` to keys and
      values once, on the call that creates the cache, and stores them (a
      `kv_cache.ContextKVCache` "cross_kv", one copy per group of rows that share the
      context, so beams neither repeat nor reorder it); later calls reuse them and never read
      `inputs_kv` again, so a decoding step costs O(Tk) attention, not a re-projection of the
      whole context.
  """
  num_heads: int
  head_dim: int | None = None
  out_features: int | None = None
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str = "einsum"
  decode: bool = False

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None, *,
               mask: jax.Array | None = None, causal: bool = False,
               positions: jax.Array | None = None) -> jax.Array:
    """Attends `inputs_q` `[B, Tq, D]` to itself or to `inputs_kv` `[B, Tk, Dkv]`.

    Args:
      mask: boolean, broadcastable to `[B, H, Tq, Tk]` (`[B, H, Tq, max_length]` when
        decoding), True = may attend.
      causal: add a causal mask (self-attention only; decoding is always causal).
      positions: int `[B, Tq]` cache slot of every query token (decode self-attention only).
    Returns:
      `[B, Tq, out_features]`.
    """
    chex.assert_rank(inputs_q, 3)
    if positions is not None:
      if not self.decode or inputs_kv is not None:
        raise ValueError("positions are only used by decode=True self-attention (KV cache)")
      if positions.shape != inputs_q.shape[:2]:
        raise ValueError(f"positions must be int [B, Tq] = {inputs_q.shape[:2]}, "
                         f"got shape {positions.shape}")
    embed_dim = inputs_q.shape[-1]
    head_dim = self.head_dim or embed_dim // self.num_heads
    if self.head_dim is None and embed_dim % self.num_heads:
      raise ValueError(f"width {embed_dim} is not divisible by num_heads={self.num_heads}; "
                       "set head_dim explicitly")
    heads_shape = (self.num_heads, head_dim)
    def dense(name, features, kernel_axes):
      return nn.DenseGeneral(
          features, axis=-1, use_bias=self.use_bias, dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(initializers.attention_kernel, kernel_axes),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, kernel_axes[1:]),
          name=name)

    if inputs_kv is None:
      qkv = dense("qkv", (3,) + heads_shape, ("embed", None, "heads", "kv"))(inputs_q)
      query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      if causal:
        raise ValueError("causal=True is only meaningful for self-attention")
      chex.assert_rank(inputs_kv, 3)
      chex.assert_equal(inputs_q.shape[0], inputs_kv.shape[0])
      query = dense("query", heads_shape, ("embed", "heads", "kv"))(inputs_q)
      if self.decode and self.has_variable("cache", "cross_kv"):
        context = self.get_variable("cache", "cross_kv")
        out = context.attend(query, mask)
        return self._project_out(out, embed_dim)
      kv = dense("kv", (2,) + heads_shape, ("embed", None, "heads", "kv"))(inputs_kv)
      key, value = kv[:, :, 0], kv[:, :, 1]
      if self.decode:
        self.put_variable("cache", "cross_kv", kv_cache.ContextKVCache.from_rows(key, value))

    if causal and not self.decode:
      mask = combine_masks(mask, make_causal_mask(inputs_q.shape[1]))
    out = None
    if self.decode and inputs_kv is None:
      if positions is None:
        key, value, cache_mask = self._update_cache(key, value)
        mask = combine_masks(mask, cache_mask)
      else:
        out, key, value, mask = self._attend_slot_cache(query, key, value, positions, mask)

    if out is None:
      out = dot_product_attention(query, key, value, mask, implementation=self.implementation)
    return self._project_out(out, embed_dim)

  def _project_out(self, out: jax.Array, embed_dim: int) -> jax.Array:
    """The output projection `[B, T, H, Dh] -> [B, T, out_features]`."""
    return nn.DenseGeneral(
        self.out_features or embed_dim, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(initializers.attention_kernel,
                                                 ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name="out")(out)

  def _update_cache(self, key, value):
    """Writes `key`/`value` `[B, T, H, Dh]` at the cache index; returns full cache and mask.

    The cache is stored `[B, H, S, Dh]`; the returned keys/values are its `[B, S, H, Dh]`
    view, a transpose XLA folds into the attention GEMMs. The first call (cache absent) only
    allocates a cache sized like its input, which is how a caller fixes the maximum decode
    length.
    """
    is_initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, _heads_major_shape(key),
                               key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros,
                                 _heads_major_shape(value), value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:
      return key, value, make_causal_mask(key.shape[1])
    batch, _, max_length, _ = cached_key.value.shape
    num_new = key.shape[1]
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, _heads_major(key),
                                                    (0, 0, index, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, _heads_major(value),
                                                      (0, 0, index, 0))
    cache_index.value = index + num_new
    query_pos = index + jnp.arange(num_new)
    key_pos = jnp.arange(max_length)
    mask = (key_pos[None, :] <= query_pos[:, None])[None, None]
    return (_token_major(cached_key.value), _token_major(cached_value.value),
            jnp.broadcast_to(mask, (batch, 1, num_new, max_length)))

  def _attend_slot_cache(self, query, key, value, positions, mask):
    """Writes `key`/`value` `[B, T, H, Dh]` at per-row slots `positions` `[B, T]` of the
    `SlotKVCache` "kv" and attends each query to the slots `<= positions[b, t]` of its row.

    Returns `(out, key, value, mask)`: `out` `[B, T, H, Dh]` from the cache, or, on the call
    that creates the cache (which writes nothing), None with the inputs' own keys, values and
    mask for the plain kernel. Slots beyond a row's position may hold stale values (padding of
    a ragged prompt); the mask hides them until they are overwritten. Positions outside
    `[0, S)` are dropped (XLA scatter semantics), so callers must size the cache.
    """
    is_initialized = self.has_variable("cache", "kv")
    batch, length, heads, head_dim = key.shape
    kv = self.variable("cache", "kv", kv_cache.SlotKVCache.zeros, batch, heads, length,
                       head_dim, key.dtype)
    slot_mask = (jnp.arange(kv.value.num_slots)[None, None, :] <= positions[:, :, None])[:, None]
    mask = combine_masks(mask, slot_mask)
    if not is_initialized:
      return None, key, value, mask
    kv.value = kv.value.write(key, value, positions)
    return kv.value.attend(query, mask), key, value, mask


def _heads_major_shape(x: jax.Array) -> tuple[int, ...]:
  batch, length, heads, head_dim = x.shape
  return (batch, heads, length, head_dim)


def _heads_major(x: jax.Array) -> jax.Array:
  """`[B, T, H, Dh] -> [B, H, T, Dh]`, the stored layout of every KV cache."""
  return jnp.swapaxes(x, 1, 2)


def _token_major(x: jax.Array) -> jax.Array:
  """`[B, H, T, Dh] -> [B, T, H, Dh]`, the layout `dot_product_attention` takes."""
  return jnp.swapaxes(x, 1, 2)
