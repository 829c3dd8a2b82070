"""Text-conditioned UNet denoiser (Stable Diffusion / Imagen style) for `mmjax.diffusion`.

    unet = UNet(channels=(64, 128), attention_levels=(1,), context_dim=512)
    out = unet.apply({"params": p}, x_t, t, context=text_emb, context_mask=text_valid)

`UNet.__call__(x_t [B, H, W, C], t [B]) -> [B, H, W, C_out]` is a `denoise_fn` in the sense
of `mmjax.diffusion` once params are bound (t the continuous time in [0, 1]).

Layout: conv_in -> per level `num_res_blocks` x (ResBlock [+ SpatialTransformer]) and a
stride-2 conv down (not after the last level) -> middle ResBlock, SpatialTransformer, ResBlock
-> per level in reverse `num_res_blocks + 1` x (concat skip, ResBlock [+ SpatialTransformer])
and nearest x2 + conv up (not after level 0) -> GroupNorm, SiLU, zero-initialised conv_out.
As in Stable Diffusion, the last conv of every ResBlock, every transformer `proj_out` and
`conv_out` start at zero, so a fresh UNet outputs exactly 0 and each block starts as identity.

Logical axis names: conv kernels `[kh, kw, Cin, Cout]` are (None, None, "embed", None) (input
channels sharded like an embedding under FSDP, output channels replicated); norms ("embed",);
dense layers reuse ("embed", "mlp") style names; attention uses `MultiHeadAttention`'s own.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.conv import Conv2D
from mmjax.nn.denoiser_inputs import check_denoiser_inputs
from mmjax.nn.transformer import TransformerBlock, dense

Dtype = Any

_CONV_AXES = (None, None, "embed", None)


def timestep_embedding(t: jax.Array, dim: int, *, scale: float = 1000.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding `[B, dim]` (float32) of times `t` `[B]`, as in DDPM/Stable Diffusion.

  `t` is multiplied by `scale` first, so t in [0, 1] maps to the familiar 0..1000 range;
  the first half of the features is cos, the second sin (the diffusers `flip_sin_to_cos` order).
  """
  if dim % 2:
    raise ValueError(f"timestep embedding width must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (jnp.asarray(t, jnp.float32) * scale)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def conv(features: int, name: str, *, kernel_size: int = 3, strides: int = 1, dtype: Dtype,
         param_dtype: Dtype, zero_init: bool = False, implementation: str = "fast") -> Conv2D:
  """A "SAME" `Conv2D` (nn.Conv's params) with logically partitioned kernel and bias.

  `implementation`: "fast" (banded kernel gradient; 1.2-1.4x faster UNet train steps on
  XLA:CPU, see benchmarks/conv_gradient.py) or "xla"; see `mmjax.nn.conv`.
  """
  kernel_init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return Conv2D(features, kernel_size=kernel_size, strides=strides, dtype=dtype,
                param_dtype=param_dtype, name=name, implementation=implementation,
                kernel_init=nn.with_logical_partitioning(kernel_init, _CONV_AXES),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))


def group_norm(num_groups: int, name: str, *, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
  """GroupNorm (eps 1e-5, as PyTorch) with scale/bias named ("embed",)."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
                      name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class ResBlock(nn.Module):
  """GN -> SiLU -> conv -> (+ time embedding) -> GN -> SiLU -> dropout -> conv, plus a skip.

  `x [B, H, W, Cin]`, `temb [B, E]` -> `[B, H, W, features]`.

  Attributes:
    scale_shift: inject the time embedding as `GN(h) * (1 + scale) + shift` (Imagen / improved
      DDPM "use_scale_shift_norm") instead of adding it before the second norm (SD).
  """
  features: int
  num_groups: int = 32
  dropout_rate: float = 0.0
  scale_shift: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(group_norm(self.num_groups, "norm1", **kw)(x))
    h = conv(self.features, "conv1", **kw)(h)
    emb_width = 2 * self.features if self.scale_shift else self.features
    emb = dense(emb_width, "time_proj", ("embed", None), **kw)(nn.silu(temb))[:, None, None, :]
    if self.scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = group_norm(self.num_groups, "norm2", **kw)(h) * (1 + scale) + shift
    else:
      h = group_norm(self.num_groups, "norm2", **kw)(h + emb)
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.silu(h))
    h = conv(self.features, "conv2", zero_init=True, **kw)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, "skip", kernel_size=1, **kw)(x)
    return x + h


class SpatialTransformer(nn.Module):
  """GN -> 1x1 proj in -> `depth` x TransformerBlock (self-, cross-attn, MLP) -> proj out, + x.

  `x [B, H, W, C]`, `context [B, L, Dc]` (None: self-attention only), `context_mask [B, L]`
  bool (True = real token) -> `[B, H, W, C]`. `proj_out` starts at zero.
  """
  num_heads: int
  depth: int = 1
  cross_attention: bool = True
  num_groups: int = 32
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    batch, height, width, channels = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = group_norm(self.num_groups, "norm", **kw)(x)
    tokens = h.reshape(batch, height * width, channels)
    h = dense(channels, "proj_in", (None, "embed"), **kw)(tokens)
    mask = None if context_mask is None else context_mask[:, None, None, :]
    for i in range(self.depth):
      h = TransformerBlock(self.num_heads, self.mlp_ratio * channels,
                           cross_attention=self.cross_attention, dtype=self.dtype,
                           param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                           name=f"block_{i}")(h, context, context_mask=mask)
    h = nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name="proj_out",
                 kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(h)
    return x + h.reshape(batch, height, width, channels)


class UNet(nn.Module):
  """Text-conditioned UNet; see the module docstring for the layout.

  Attributes:
    channels: width of each resolution level, e.g. (64, 128); level i runs at H / 2^i.
    num_res_blocks: ResBlocks per level on the way down (up: one more, for the extra skip).
    attention_levels: level indices that get a SpatialTransformer after each ResBlock.
    mid_attention: SpatialTransformer between the two middle ResBlocks.
    num_heads: attention heads in every SpatialTransformer (each level's width must divide).
    transformer_depth: TransformerBlocks per SpatialTransformer.
    context_dim: width Dc of the cross-attention context `[B, L, Dc]`; None = no
      cross-attention (the transformers then only self-attend, and `context` must be None).
    out_channels: output channels; default the input's C.
    num_groups: GroupNorm groups; must divide every level width (and the concatenations of
      level widths the up path sees).
    dropout_rate: dropout inside ResBlocks (active only with `train=True`, rng "dropout").
    scale_shift: time embedding as scale/shift of the ResBlock norm (else added).
    time_scale: multiplier of t in [0, 1] before the sinusoidal embedding.
    low_res_channels: > 0 for a super-resolution stage: `low_res [B, h, w, low_res_channels]`
      is resized (bilinear) to H x W and concatenated to the input channels.
    aug_level_embedding: embed a noise-augmentation level `aug_level [B]` in [0, 1] (of the
      low-res conditioning) like t and add it to the time embedding.
    dtype / param_dtype: compute / parameter dtypes (e.g. bfloat16 / float32). The output is
      float32 whatever `dtype` is (the sampler and losses work in float32).
  """
  channels: tuple[int, ...] = (64, 128)
  num_res_blocks: int = 2
  attention_levels: tuple[int, ...] = (1,)
  mid_attention: bool = True
  num_heads: int = 4
  transformer_depth: int = 1
  context_dim: int | None = None
  out_channels: int | None = None
  num_groups: int = 32
  dropout_rate: float = 0.0
  scale_shift: bool = False
  time_scale: float = 1000.0
  low_res_channels: int = 0
  aug_level_embedding: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"

  def _check_config(self):
    levels = len(self.channels)
    if levels < 1:
      raise ValueError("UNet.channels must name at least one level width, e.g. (64, 128)")
    bad_levels = [i for i in self.attention_levels if not 0 <= i < levels]
    if bad_levels:
      raise ValueError(f"UNet.attention_levels {tuple(self.attention_levels)} has levels "
                       f"{bad_levels} outside 0..{levels - 1} (channels={tuple(self.channels)})")
    widths = set(self.channels)
    widths |= {self.channels[i] + self.channels[max(i - 1, 0)] for i in range(levels)}
    widths |= {2 * c for c in self.channels}
    bad = sorted(w for w in widths if w % self.num_groups)
    if bad:
      raise ValueError(f"UNet.num_groups={self.num_groups} must divide every width the norms "
                       f"see (level widths and skip concatenations); it does not divide {bad}")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None, low_res: jax.Array | None = None,
               aug_level: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Predicts the denoiser output.

    Args:
      x: `[B, H, W, C]` noisy images (or latents); H, W divisible by 2^(len(channels) - 1).
      t: `[B]` (or a scalar, broadcast) continuous time in [0, 1].
      context: `[B, L, context_dim]` e.g. text-encoder tokens; required iff context_dim is set.
      context_mask: `[B, L]` bool, True for real tokens; masked tokens are not attended to.
      low_res: `[B, h, w, low_res_channels]` low-resolution conditioning image (SR stage).
      aug_level: `[B]` (or scalar) noise-augmentation level in [0, 1] of `low_res`.
      train: enables dropout.

    Returns:
      `[B, H, W, out_channels]` float32.
    """
    self._check_config()
    x, t, context, context_mask, aug_level = self._check_inputs(
        x, t, context, context_mask, low_res, aug_level)
    batch, height, width, in_channels = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(num_groups=self.num_groups, **kw)

    temb_width = 4 * self.channels[0]
    temb = self._embed_time(t, temb_width, "time")
    if self.aug_level_embedding:
      temb = temb + self._embed_time(aug_level, temb_width, "aug")

    if self.low_res_channels:
      low_res = jax.image.resize(low_res.astype(jnp.float32),
                                 (batch, height, width, self.low_res_channels), "bilinear")
      x = jnp.concatenate([x.astype(jnp.float32), low_res], axis=-1)
    if context is not None:
      context = context.astype(self.dtype)

    def res_block(h, features, name):
      return ResBlock(features, dropout_rate=self.dropout_rate, scale_shift=self.scale_shift,
                      name=name, **norm_kw)(h, temb, train)

    def transformer(h, name):
      return SpatialTransformer(self.num_heads, self.transformer_depth,
                                cross_attention=self.context_dim is not None,
                                attention_impl=self.attention_impl, name=name,
                                **norm_kw)(h, context, context_mask)

    h = conv(self.channels[0], "conv_in", **kw)(x.astype(self.dtype))
    skips = [h]
    last = len(self.channels) - 1
    for level, features in enumerate(self.channels):
      for i in range(self.num_res_blocks):
        h = res_block(h, features, f"down_{level}_res_{i}")
        if level in self.attention_levels:
          h = transformer(h, f"down_{level}_attn_{i}")
        skips.append(h)
      if level != last:
        h = conv(features, f"down_{level}_downsample", strides=2, **kw)(h)
        skips.append(h)

    h = res_block(h, self.channels[-1], "mid_res_0")
    if self.mid_attention:
      h = transformer(h, "mid_attn")
    h = res_block(h, self.channels[-1], "mid_res_1")

    for level in reversed(range(len(self.channels))):
      features = self.channels[level]
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(h, features, f"up_{level}_res_{i}")
        if level in self.attention_levels:
          h = transformer(h, f"up_{level}_attn_{i}")
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2, no gather
        h = conv(features, f"up_{level}_upsample", **kw)(h)

    h = nn.silu(group_norm(self.num_groups, "norm_out", **kw)(h))
    out = conv(self.out_channels or in_channels, "conv_out", zero_init=True, **kw)(h)
    return out.astype(jnp.float32)

  def _embed_time(self, t: jax.Array, width: int, prefix: str) -> jax.Array:
    """Sinusoidal features of `t` `[B]` through a 2-layer SiLU MLP: `[B, width]`."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    emb = timestep_embedding(t, self.channels[0], scale=self.time_scale)
    emb = nn.silu(dense(width, f"{prefix}_fc1", (None, "mlp"), **kw)(emb.astype(self.dtype)))
    return dense(width, f"{prefix}_fc2", ("mlp", "embed"), **kw)(emb)

  def _check_inputs(self, x, t, context, context_mask, low_res, aug_level):
    """Validates shapes against the config; returns (x, t [B], context, mask, aug_level [B])."""
    x, t, context, context_mask, aug_level = check_denoiser_inputs(
        "UNet", x, t, context, context_mask, low_res, aug_level, context_dim=self.context_dim,
        low_res_channels=self.low_res_channels, aug_level_embedding=self.aug_level_embedding)
    height, width = x.shape[1:3]
    factor = 2 ** (len(self.channels) - 1)
    if height % factor or width % factor:
      raise ValueError(f"UNet input size {height}x{width} must be divisible by "
                       f"2^(levels - 1) = {factor} for channels={tuple(self.channels)}")
    return x, t, context, context_mask, aug_level

