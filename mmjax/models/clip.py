"""CLIP / SigLIP two-tower model: image and text encoders, projections, learnable temperature."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.transformer import dense

Dtype = Any


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Normalises the last axis in float32 (embeddings are compared in float32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class CLIP(nn.Module):
  """Two towers mapped to a shared, L2-normalised embedding space.

  Attributes:
    image_encoder: module mapping images `[B, H, W, C]` to `(tokens, pooled [B, Wi])`.
    text_encoder: module mapping token ids `[B, L]` to `(features, pooled [B, Wt])`.
    embed_dim: shared embedding width E.
    logit_scale_init: initial log of the inverse temperature (CLIP: log(1/0.07); SigLIP: log 10).
    logit_bias_init: if set, a learnable logit bias is created (SigLIP: -10).
    image_mean, image_std: per-channel (R, G, B) normalisation applied to the images first,
      `(images - mean) / std`, so a model warm-started from a public checkpoint (trained on
      normalised pixels, e.g. `mmjax.convert.OPENAI_CLIP_MEAN/STD`) takes mmjax's [0, 1]
      images; None (default): images are used as given.
    max_logit_scale: `logit_params()` clips the log inverse temperature to this (CLIP's
      log(100), the default); None: no clip (SigLIP's released models learned exp(t) > 100).
    project_image: map the pooled image vector through "image_proj" `[Wi, E]` (default).
      False: the pooled vector is the embedding (SigLIP: its MAP head's output, Wi == E).
    text_proj_bias: "text_proj" has a bias `[E]` (SigLIP's text head); CLIP's has none.
  """
  image_encoder: nn.Module
  text_encoder: nn.Module
  embed_dim: int
  logit_scale_init: float = math.log(1 / 0.07)
  logit_bias_init: float | None = None
  dtype: Dtype = jnp.float32
  image_mean: tuple[float, ...] | None = None
  image_std: tuple[float, ...] | None = None
  max_logit_scale: float | None = math.log(100.0)
  project_image: bool = True
  text_proj_bias: bool = False

  def setup(self):
    if self.project_image:
      self.image_proj = dense(self.embed_dim, "image_proj", ("embed", "embed_out"),
                              dtype=self.dtype, use_bias=False)
    self.text_proj = dense(self.embed_dim, "text_proj", ("embed", "embed_out"),
                           dtype=self.dtype, use_bias=self.text_proj_bias)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init),
                                  ())
    if self.logit_bias_init is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())

  def image_features(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, C]` -> the embedding before L2 normalisation `[B, E]` (model dtype)."""
    if (self.image_mean is None) != (self.image_std is None):
      raise ValueError("set both image_mean and image_std (per-channel), or neither")
    if self.image_mean is not None:
      mean = jnp.asarray(self.image_mean, images.dtype)
      images = (images - mean) / jnp.asarray(self.image_std, images.dtype)
    _, pooled = self.image_encoder(images)
    if self.project_image:
      return self.image_proj(pooled)
    if pooled.shape[-1] != self.embed_dim:
      raise ValueError(f"project_image=False needs the image encoder's pooled width "
                       f"{pooled.shape[-1]} to equal embed_dim={self.embed_dim}")
    return pooled

  def text_features(self, tokens: jax.Array) -> jax.Array:
    """`[B, L]` int32 -> the embedding before L2 normalisation `[B, E]` (model dtype)."""
    _, pooled = self.text_encoder(tokens)
    return self.text_proj(pooled)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, C]` -> normalised `[B, E]` float32."""
    return l2_normalize(self.image_features(images))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """`[B, L]` int32 -> normalised `[B, E]` float32."""
    return l2_normalize(self.text_features(tokens))

  def logit_params(self) -> dict[str, jax.Array]:
    """logit_scale `[]` (log inverse temperature) and, for SigLIP, logit_bias `[]`.

    The scale is clipped to `max_logit_scale` (log(100), as CLIP does, so the temperature
    cannot collapse); not at all when that is None.
    """
    scale = self.logit_scale
    if self.max_logit_scale is not None:
      scale = jnp.minimum(scale, self.max_logit_scale)
    out = {"logit_scale": scale}
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.logit_bias
    return out

  def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
    """Returns image_emb `[B, E]`, text_emb `[B, E]` and the `logit_params()`."""
    return {"image_emb": self.encode_image(images), "text_emb": self.encode_text(tokens),
            **self.logit_params()}
