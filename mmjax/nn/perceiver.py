"""Flamingo's Perceiver Resampler (Alayrac et al. 2022): any number of media tokens -> R latents.

    x = media_tokens + frame_embed[f]                 per frame f, then flattened over (F, N)
    for each layer:
      latents = latents + Attn(q=LN_l(latents), kv=concat(LN_m(x), LN_l(latents)))
      latents = latents + MLP(LN(latents))
    out = LN(latents)

As in open_flamingo's PerceiverAttention, the media and the latents have their own LayerNorms
and the latents (normed with the query's norm) join the keys/values, so a latent can also
attend to the latents. The attention is mmjax's one `MultiHeadAttention` (cross-attention
path, no projection biases, as open_flamingo); the MLP is `MlpBlock`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.attention import MultiHeadAttention
from mmjax.nn.transformer import DEFAULT_LAYER_NORM_EPSILON, MlpBlock, layer_norm

Dtype = Any


class PerceiverLayer(nn.Module):
  """One resampler layer: latents `[B, R, D]` attend to `[media; latents]`, then an MLP."""
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  gelu_approximate: bool = True
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, latents: jax.Array, media: jax.Array) -> jax.Array:
    """`latents` `[B, R, D]`, `media` `[B, T, D]` -> latents `[B, R, D]`."""
    def norm(name):
      return layer_norm(name, self.dtype, self.param_dtype, self.layer_norm_epsilon)
    latents_normed = norm("ln_latents")(latents)
    keys_values = jnp.concatenate([norm("ln_media")(media), latents_normed], axis=1)
    latents = latents + MultiHeadAttention(
        self.num_heads, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        implementation=self.attention_impl, name="attn")(latents_normed, keys_values)
    h = norm("ln_mlp")(latents)
    return latents + MlpBlock(self.mlp_dim, self.dtype, self.param_dtype,
                              gelu_approximate=self.gelu_approximate, name="mlp")(h)


class PerceiverResampler(nn.Module):
  """Media tokens `[B, M, F, N, D]` -> `num_latents` latents per medium `[B, M, R, D]`.

  Attributes:
    num_latents: R, the learned queries ("latents" `[R, D]`).
    num_layers, num_heads: the `PerceiverLayer` stack; D (the input width) must divide by
      num_heads.
    max_frames: rows of the learned frame (time) embedding "frame_embed" `[max_frames, D]`,
      added to every token of frame f; a medium may have at most this many frames.
    mlp_ratio: MLP hidden width / D.
  """
  num_latents: int = 64
  num_layers: int = 6
  num_heads: int = 8
  max_frames: int = 1
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  gelu_approximate: bool = True
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, media_tokens: jax.Array) -> jax.Array:
    """Resamples every medium of every row independently.

    Args:
      media_tokens: `[B, M, F, N, D]`: M media per row, F <= max_frames frames per medium, N
        tokens per frame (e.g. a ViT's patch tokens).
    Returns:
      `[B, M, num_latents, D]`.
    """
    if media_tokens.ndim != 5:
      raise ValueError(f"media_tokens must be [B, M, F, N, D] (media, frames, tokens), got "
                       f"shape {media_tokens.shape}")
    batch, num_media, num_frames, num_tokens, width = media_tokens.shape
    if num_frames > self.max_frames:
      raise ValueError(f"media have {num_frames} frames, more than max_frames={self.max_frames}")
    frame_embed = self.param(
        "frame_embed", nn.with_logical_partitioning(initializers.embedding, (None, "embed")),
        (self.max_frames, width), self.param_dtype)
    latents = self.param(
        "latents", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
        (self.num_latents, width), self.param_dtype)
    media = media_tokens.astype(self.dtype) + frame_embed[:num_frames, None].astype(self.dtype)
    media = media.reshape(batch * num_media, num_frames * num_tokens, width)
    x = jnp.broadcast_to(latents.astype(self.dtype), (batch * num_media,) + latents.shape)
    for i in range(self.num_layers):
      x = PerceiverLayer(self.num_heads, int(width * self.mlp_ratio), self.dtype,
                         self.param_dtype, self.attention_impl, self.gelu_approximate,
                         self.layer_norm_epsilon, name=f"layer_{i}")(x, media)
    x = layer_norm("ln_final", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    return x.reshape(batch, num_media, self.num_latents, width)
