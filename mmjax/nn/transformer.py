"""Pre-LayerNorm transformer blocks used by every mmjax encoder and decoder."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.attention import MultiHeadAttention

Dtype = Any


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """LayerNorm with logically partitioned scale/bias (`("embed",)`)."""
  return nn.LayerNorm(
      dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def dense(features: int, name: str, axes: tuple[str | None, str | None], *, dtype: Dtype,
          param_dtype: Dtype = jnp.float32, use_bias: bool = True) -> nn.Dense:
  """`nn.Dense` whose kernel `[in, out]` carries logical `axes` and bias `axes[1]`."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(initializers.dense_kernel, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class MlpBlock(nn.Module):
  """Two-layer GELU MLP: `[..., D] -> [..., mlp_dim] -> [..., D]`.

  Attributes:
    gelu_approximate: tanh approximation of GELU (True) or the exact erf form (False, what
      PyTorch's `nn.GELU()` and open_clip compute).
  """
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = dense(self.mlp_dim, "fc1", ("embed", "mlp"), dtype=self.dtype,
              param_dtype=self.param_dtype)(x)
    h = nn.gelu(h, approximate=self.gelu_approximate)
    return dense(width, "fc2", ("mlp", "embed"), dtype=self.dtype,
                 param_dtype=self.param_dtype)(h)


class TransformerBlock(nn.Module):
  """x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + MLP(LN(x)).

  Attributes:
    cross_attention: add a cross-attention sub-layer over `context` (decoders, fusion).
    decode: KV-cached self-attention (autoregressive decoding) and cross-attention keys/values
      projected once from the context; see `MultiHeadAttention`.
  """
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, context_mask: jax.Array | None = None,
               causal: bool = False, positions: jax.Array | None = None) -> jax.Array:
    """`x` `[B, T, D]`, `context` `[B, S, Dc]`; masks broadcastable to `[B, H, T, T|S]`.

    `positions` int `[B, T]`: per-row KV-cache slots of the tokens (decode mode only).
    """
    attn = lambda name, decode: MultiHeadAttention(
        self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        implementation=self.attention_impl, decode=decode, name=name)
    h = layer_norm("ln_attn", self.dtype, self.param_dtype)(x)
    x = x + attn("self_attn", self.decode)(h, mask=mask, causal=causal,
                                              positions=positions)
    if self.cross_attention:
      if context is None:
        raise ValueError("this block has cross_attention=True but was called without context")
      h = layer_norm("ln_cross", self.dtype, self.param_dtype)(x)
      x = x + attn("cross_attn", self.decode)(h, context, mask=context_mask)
    h = layer_norm("ln_mlp", self.dtype, self.param_dtype)(x)
    x = x + MlpBlock(self.mlp_dim, self.dtype, self.param_dtype,
                     gelu_approximate=self.gelu_approximate, name="mlp")(h)
    return x


class Transformer(nn.Module):
  """A stack of `TransformerBlock`s with a final LayerNorm.

  Attributes:
    remat: rematerialise each block in the backward pass (`nn.remat`), trading compute for
      activation memory.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  remat: bool = False
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               mask: jax.Array | None = None, context_mask: jax.Array | None = None,
               causal: bool = False, positions: jax.Array | None = None) -> jax.Array:
    """`[B, T, D] -> [B, T, D]`; `positions` int `[B, T]` are KV-cache slots (decode mode)."""
    block_cls = nn.remat(TransformerBlock, static_argnums=(5,)) if self.remat else TransformerBlock
    for i in range(self.num_layers):
      block = block_cls(self.num_heads, self.mlp_dim, self.cross_attention, self.dtype,
                        self.param_dtype, self.attention_impl, self.decode,
                        gelu_approximate=self.gelu_approximate, name=f"block_{i}")
      x = block(x, context, mask, context_mask, causal, positions)
    return layer_norm("ln_final", self.dtype, self.param_dtype)(x)
