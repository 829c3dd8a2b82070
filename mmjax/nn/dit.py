"""Diffusion transformer (DiT) denoiser with adaLN-Zero and cross-attention to text tokens.

    dit = DiT(patch_size=4, width=256, num_layers=6, num_heads=4, context_dim=128)
    out = dit.apply({"params": p}, x_t, t, context=text_tokens, context_mask=text_valid)

`DiT.__call__(x_t [B, H, W, C], t [B]) -> [B, H, W, C_out]` has the `UNet`'s signature and
fields for conditioning (`context_dim`, `low_res_channels`, `aug_level_embedding`,
`time_scale`), so `TextToImageDenoiser`, the latent-diffusion and the cascade tasks take
either (`model.denoiser.name: "unet" | "dit"`).

Layout (Peebles & Xie 2023, with PixArt-alpha's text cross-attention):
  [low-res image resized and concatenated to the channels] -> non-overlapping p x p patches
  -> linear patch embedding + 2-D sin-cos (or learned) positions -> `num_layers` x
  `TransformerBlock(adaptive_norm=True, cross_attention=...)` -> affine-free LayerNorm
  modulated by the condition -> zero-initialised linear to p * p * C_out -> unpatchify.
The condition vector is an MLP of the timestep embedding, plus the noise-augmentation level's
(super-resolution) and a projection of the masked mean of the text tokens (the pooled text
of SD3 / PixArt-Sigma; it also separates conditional from null contexts for CFG).

Cross-attention rather than MMDiT-style joint attention over [text; image] tokens: the image
tokens attend to the text encoder's tokens once per block and the MLPs run over image tokens
only, which is cheaper on CPU (24 text tokens next to 64 image tokens would add ~40% to every
MLP and attention projection), and it keeps the denoiser's `context` contract shared with the
UNet (the same text encoder, null context and CFG code).

Zero-initialised output layer and adaLN modulations: a fresh DiT outputs exactly 0, and every
block starts as the identity on its input except for the cross-attention sub-layer.
Logical axis names: dense layers as in `transformer.py`, positions ("length", "embed").
"""
from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.denoiser_inputs import check_denoiser_inputs
from mmjax.nn.positions import sincos_2d_positions
from mmjax.nn.transformer import Transformer, affine_free_layer_norm, dense, modulate
from mmjax.nn.unet import timestep_embedding

Dtype = Any

POSITION_EMBEDDINGS = ("sincos", "learned")


class DiT(nn.Module):
  """Diffusion transformer; see the module docstring for the layout.

  Attributes:
    patch_size: p; H and W must be multiples of it (tokens: H W / p^2).
    width, num_layers, num_heads, mlp_ratio: the transformer's size (mlp_dim = ratio x width).
    context_dim: width Dc of the cross-attention context `[B, L, Dc]`; None = no
      cross-attention and no pooled text (an unconditional DiT; `context` must then be None).
    out_channels: output channels; default the input's C.
    position_embedding: "sincos" (fixed, any size) or "learned" (normal(0.02) init).
    time_scale: multiplier of t in [0, 1] before the sinusoidal embedding.
    frequency_dim: width of the sinusoidal time features fed to the condition MLP.
    low_res_channels / aug_level_embedding: a super-resolution stage's inputs, as the UNet's.
    remat: rematerialise each block in the backward pass.
    dtype / param_dtype: compute / parameter dtypes; the output is float32.
  """
  patch_size: int = 2
  width: int = 256
  num_layers: int = 6
  num_heads: int = 4
  mlp_ratio: float = 4.0
  context_dim: int | None = None
  out_channels: int | None = None
  position_embedding: str = "sincos"
  time_scale: float = 1000.0
  frequency_dim: int = 256
  low_res_channels: int = 0
  aug_level_embedding: bool = False
  remat: bool = False
  gelu_approximate: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None, low_res: jax.Array | None = None,
               aug_level: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Predicts the denoiser output.

    Args:
      x: `[B, H, W, C]` noisy images or latents; H, W multiples of `patch_size`.
      t: `[B]` (or a scalar) continuous time in [0, 1].
      context: `[B, L, context_dim]` text tokens; required iff context_dim is set.
      context_mask: `[B, L]` bool, True for real tokens (attended to and pooled).
      low_res: `[B, h, w, low_res_channels]` low-resolution conditioning image (SR stage).
      aug_level: `[B]` (or scalar) noise-augmentation level of `low_res`.
      train: unused (no dropout); kept for the UNet's signature.

    Returns:
      `[B, H, W, out_channels]` float32.
    """
    del train
    x, t, context, context_mask, aug_level = self._check_inputs(
        x, t, context, context_mask, low_res, aug_level)
    batch, height, width, in_channels = x.shape
    p = self.patch_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    if self.low_res_channels:
      low_res = jax.image.resize(low_res.astype(jnp.float32),
                                 (batch, height, width, self.low_res_channels), "bilinear")
      x = jnp.concatenate([x.astype(jnp.float32), low_res], axis=-1)
    patches = einops.rearrange(x.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)",
                               p=p, q=p)
    tokens = dense(self.width, "patch_embed", (None, "embed"), **kw)(patches)
    tokens = tokens + self._positions(height // p, width // p).astype(self.dtype)

    condition = self._embed_time(t, "time")
    if self.aug_level_embedding:
      condition = condition + self._embed_time(aug_level, "aug")
    mask = None
    if context is not None:
      context = context.astype(self.dtype)
      valid = (jnp.ones(context.shape[:2], bool) if context_mask is None else context_mask)
      weights = valid.astype(jnp.float32)[..., None]
      pooled = (context.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
      condition = condition + dense(self.width, "pooled_text", (None, "embed"), **kw)(
          pooled.astype(self.dtype))
      mask = None if context_mask is None else context_mask[:, None, None, :]

    h = Transformer(self.num_layers, self.num_heads, int(self.mlp_ratio * self.width),
                    cross_attention=self.context_dim is not None, dtype=self.dtype,
                    param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                    remat=self.remat, gelu_approximate=self.gelu_approximate,
                    adaptive_norm=True, final_norm=False, name="transformer")(
                        tokens, context, context_mask=mask, condition=condition)

    shift, scale = jnp.split(nn.Dense(
        2 * self.width, name="final_modulation", **kw,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, "mlp")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(
            nn.silu(condition)), 2, axis=-1)
    h = modulate(affine_free_layer_norm("final_norm", self.dtype)(h), shift, scale)
    out_channels = self.out_channels or in_channels
    h = nn.Dense(p * p * out_channels, name="final_proj", **kw,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                          ("embed", None)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(h)
    out = einops.rearrange(h, "b (h w) (p q c) -> b (h p) (w q) c", h=height // p, p=p, q=p)
    return out.astype(jnp.float32)

  def _positions(self, rows: int, cols: int) -> jax.Array:
    """Position embeddings `[rows * cols, width]`."""
    if self.position_embedding == "sincos":
      return jnp.asarray(sincos_2d_positions(rows, cols, self.width))
    return self.param("positions", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("length", "embed")), (rows * cols, self.width),
        self.param_dtype)

  def _embed_time(self, t: jax.Array, prefix: str) -> jax.Array:
    """Sinusoidal features of `t [B]` through a 2-layer SiLU MLP: `[B, width]`."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb = timestep_embedding(t, self.frequency_dim, scale=self.time_scale)
    emb = nn.silu(dense(self.width, f"{prefix}_fc1", (None, "mlp"), **kw)(emb.astype(self.dtype)))
    return dense(self.width, f"{prefix}_fc2", ("mlp", "embed"), **kw)(emb)

  def _check_inputs(self, x, t, context, context_mask, low_res, aug_level):
    """Validates the config and the inputs; returns (x, t [B], context, mask, aug_level)."""
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"DiT.position_embedding must be one of {POSITION_EMBEDDINGS}, got "
                       f"{self.position_embedding!r}")
    if self.width % self.num_heads:
      raise ValueError(f"DiT.width={self.width} must be divisible by num_heads={self.num_heads}")
    x, t, context, context_mask, aug_level = check_denoiser_inputs(
        "DiT", x, t, context, context_mask, low_res, aug_level, context_dim=self.context_dim,
        low_res_channels=self.low_res_channels, aug_level_embedding=self.aug_level_embedding)
    height, width = x.shape[1:3]
    if self.patch_size < 1 or height % self.patch_size or width % self.patch_size:
      raise ValueError(f"DiT.patch_size={self.patch_size} must divide the input size "
                       f"{height}x{width}")
    return x, t, context, context_mask, aug_level

