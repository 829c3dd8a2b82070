"""Flamingo's gated cross-attention block (GATED XATTN-DENSE) and its per-image text mask.

    x = x + tanh(alpha_attn) * has_media * CrossAttn(LN(x), media_latents, mask=media_mask)
    x = x + tanh(alpha_ffw) * MLP(LN(x))

The gates are scalars initialised to 0, so a freshly inserted block is exactly the identity and
the frozen LM it sits in starts out unchanged (Alayrac et al. 2022, sec. 2.2).

Which image a text token sees (open_flamingo's only_attend_immediate_media=True): only the
latents of the latest `<image>` at or before it, so the `<image>` token itself attends to its
own image. Text before the first image (and after more `<image>` tokens than there are media)
sees nothing: its cross-attention output is exactly zero.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import MultiHeadAttention
from mmjax.nn.transformer import DEFAULT_LAYER_NORM_EPSILON, MlpBlock, layer_norm

Dtype = Any


def media_index(media_locations: jax.Array, media_before: jax.Array | None = None) -> jax.Array:
  """Int `[B, L]`: index of the latest medium at or before each token (-1 before the first).

  Args:
    media_locations: bool `[B, L]`, True at the `<image>` tokens.
    media_before: int `[B]`, `<image>` tokens of each row before these L (KV-cached decoding
      feeds a row a few tokens at a time); default 0.
  """
  index = jnp.cumsum(media_locations.astype(jnp.int32), axis=-1) - 1
  return index if media_before is None else index + media_before[:, None]


def media_mask(media_locations: jax.Array, num_media: int, num_latents: int,
               media_before: jax.Array | None = None) -> jax.Array:
  """Bool `[B, 1, L, M * R]`: True where token l may attend to latent r of medium m.

  Args:
    media_locations: bool `[B, L]`, True at the `<image>` tokens (the i-th one stands for
      medium i).
    num_media: M; num_latents: R (latents per medium, medium-major in the key axis).
    media_before: see `media_index`.
  Returns:
    True at `[b, 0, l, m * R + r]` iff m is the latest medium at or before token l. Rows of
    text before the first `<image>` are all False.
  """
  if media_locations.ndim != 2 or media_locations.dtype != jnp.bool_:
    raise ValueError(f"media_locations must be bool [B, L], got {media_locations.dtype} "
                     f"shape {media_locations.shape}")
  medium_of_key = jnp.repeat(jnp.arange(num_media), num_latents)
  index = media_index(media_locations, media_before)
  return (index[:, :, None] == medium_of_key)[:, None]


class GatedCrossAttentionBlock(nn.Module):
  """Text `[B, L, D]` cross-attends to resampled media `[B, M, R, Dv]` through tanh gates.

  Attributes:
    num_heads: heads of the cross-attention (D must divide by it).
    mlp_dim: the MLP's hidden width.
    decode: cache the media keys/values on the first call (`MultiHeadAttention`'s
      cross-attention cache) and reuse them for every later decoding step.
  Parameters: "alpha_attn", "alpha_ffw" (scalars, init 0), "ln_cross", "cross_attn" (no
  projection biases, as open_flamingo), "ln_mlp", "mlp".
  """
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  gelu_approximate: bool = True
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, media_latents: jax.Array, media_locations: jax.Array,
               media_before: jax.Array | None = None) -> jax.Array:
    """`x` `[B, L, D]`, `media_latents` `[B, M, R, Dv]`, `media_locations` bool `[B, L]`
    (True at `<image>` tokens), `media_before` int `[B]` (see `media_index`) -> `[B, L, D]`."""
    if media_latents.ndim != 4 or media_latents.shape[0] != x.shape[0]:
      raise ValueError(f"media_latents must be [B={x.shape[0]}, M, R, Dv], got shape "
                       f"{media_latents.shape}")
    if media_locations.shape != x.shape[:2]:
      raise ValueError(f"media_locations must be bool [B, L] = {x.shape[:2]}, got shape "
                       f"{media_locations.shape}")
    batch, num_media, num_latents, media_width = media_latents.shape
    mask = media_mask(media_locations, num_media, num_latents, media_before)
    has_media = mask.any(axis=-1)[:, 0, :, None]  # [B, L, 1]
    # A row with nothing to attend to would get a uniform softmax (einsum kernel) or a
    # kernel-dependent value (fused ones); let it attend to everything, then zero it.
    attend = mask | ~has_media[:, None]
    alpha_attn = self.param("alpha_attn", nn.initializers.zeros, (), self.param_dtype)
    alpha_ffw = self.param("alpha_ffw", nn.initializers.zeros, (), self.param_dtype)
    h = layer_norm("ln_cross", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    attended = MultiHeadAttention(
        self.num_heads, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        implementation=self.attention_impl, decode=self.decode, name="cross_attn")(
            h, media_latents.reshape(batch, num_media * num_latents, media_width), mask=attend)
    x = x + jnp.tanh(alpha_attn).astype(self.dtype) * (attended * has_media.astype(self.dtype))
    h = layer_norm("ln_mlp", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    h = MlpBlock(self.mlp_dim, self.dtype, self.param_dtype,
                 gelu_approximate=self.gelu_approximate, name="mlp")(h)
    return x + jnp.tanh(alpha_ffw).astype(self.dtype) * h
