"""KL-regularised convolutional autoencoder (the Stable Diffusion "VAE") for latent diffusion.

    ae = KLAutoencoder(channels=(32, 64, 64), latent_channels=4)   # 32x32x3 -> 8x8x4
    recon, posterior = ae.apply({"params": p}, x, key)             # x [B, H, W, 3] in [-1, 1]
    z = ae.apply({"params": p}, x, key, method=KLAutoencoder.to_latents)   # scaled latents
    x_hat = ae.apply({"params": p}, z, method=KLAutoencoder.from_latents)

Encoder: conv_in -> per level `num_res_blocks` ResBlocks and a stride-2 conv down (not after
the last level) -> middle ResBlock, [self-attention SpatialTransformer], ResBlock -> GroupNorm,
SiLU -> conv_out to 2 * latent_channels -> 1x1 `quant_conv` = (mean, logvar). The decoder mirrors
it: 1x1 `post_quant_conv` -> conv_in -> middle -> per level in reverse `num_res_blocks + 1`
ResBlocks and nearest x2 + conv up (not after level 0) -> GroupNorm, SiLU -> conv_out. The spatial
downsample factor is 2^(len(channels) - 1). Layer names follow Stable Diffusion's
`AutoencoderKL` structure (quant_conv / post_quant_conv included) so its weights can be mapped.

`layout` picks the blocks (the level structure above is the same for both):
  "mmjax" (default): `mmjax.nn.unet`'s `ResBlock` (with the learned shift below), a
    `SpatialTransformer` (GN, proj_in, transformer block with MLP, proj_out) in the middle, and
    GroupNorm eps 1e-5.
  "sd": Stable Diffusion's / diffusers' `AutoencoderKL` blocks, so its checkpoints load exactly
    (`mmjax.convert.sd_vae.load_sd_vae`): `SDResBlock` (no time embedding, no shift), `SDAttention`
    (GN -> one multi-head self-attention -> + x, no MLP) in the middle, GroupNorm eps 1e-6.
  diffusers pads its stride-2 downsampling conv by (0, 1) rows and columns; "SAME" does the
  same on the even sizes every level sees (encode requires H, W divisible by f).

The "mmjax" building blocks are `mmjax.nn.unet`'s `ResBlock`, `SpatialTransformer`, `conv` and
`group_norm`. `ResBlock` always takes a time embedding; the autoencoder has none, so it feeds a
constant `[B, 1]` embedding of ones: each block's `time_proj` then acts as a learned per-channel
shift before its second norm (2 * features extra numbers per block, all trained).

Scaling (as in Stable Diffusion): a diffusion model sees `z = scaling_factor * sample`, where
`scaling_factor` = 1 / std of the training latents (SD v1: 0.18215), estimated once after
autoencoder training with `estimate_scaling_factor`, so the diffused latents have unit variance.

Logical axis names: those of `mmjax.nn.unet` (conv kernels (None, None, "embed", None), norms
("embed",)); the "sd" attention has `MultiHeadAttention`'s own.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.nn.attention import MultiHeadAttention
from mmjax.nn.unet import ResBlock, SpatialTransformer, conv, group_norm

Dtype = Any

# Stable Diffusion clamps the log-variance to this range before exponentiating.
LOGVAR_RANGE = (-30.0, 20.0)
RECONSTRUCTION_LOSSES = ("l1", "l2")
LAYOUTS = ("mmjax", "sd")
# diffusers' AutoencoderKL norms use 1e-6 (mmjax's own blocks PyTorch's default 1e-5).
SD_NORM_EPSILON = 1e-6


@flax.struct.dataclass
class DiagonalGaussian:
  """Diagonal Gaussian posterior q(z | x) over latents `[B, h, w, c]` (a pytree, jit-safe).

  Attributes:
    mean: `[B, h, w, c]` float32.
    logvar: `[B, h, w, c]` float32, clamped to `LOGVAR_RANGE`.
  """
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    """`moments [B, h, w, 2c]` (mean channels first, then logvar) -> the posterior."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return cls(mean=mean, logvar=jnp.clip(logvar, *LOGVAR_RANGE))

  @property
  def std(self) -> jax.Array:
    """`[B, h, w, c]` standard deviation exp(logvar / 2)."""
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    """`[B, h, w, c]` variance exp(logvar)."""
    return jnp.exp(self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    """Reparameterised sample mean + std * eps, eps ~ N(0, I): `[B, h, w, c]`."""
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    """The posterior mode (= mean) `[B, h, w, c]`."""
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per example `[B]`: 0.5 * sum(mean^2 + var - 1 - logvar) over h, w, c."""
    per_dim = 0.5 * (jnp.square(self.mean) + self.var - 1.0 - self.logvar)
    return jnp.sum(per_dim, axis=tuple(range(1, per_dim.ndim)))


def estimate_scaling_factor(latents: jax.Array) -> jax.Array:
  """1 / std of a batch of (unscaled) latents `[B, h, w, c]` over all elements: a scalar.

  Stable Diffusion's recipe: encode a batch of training images, take posterior samples, and
  scale latents by 1 / their standard deviation so the diffusion model sees unit variance.
  """
  latents = jnp.asarray(latents, jnp.float32)
  if latents.ndim != 4 or latents.size < 2:
    raise ValueError(f"latents must be [B, h, w, c] with at least 2 elements, got shape "
                     f"{latents.shape}")
  return 1.0 / jnp.std(latents)


def autoencoder_loss(recon: jax.Array, x: jax.Array, posterior: DiagonalGaussian,
                     kl_weight: float, *, reconstruction: str = "l1"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Reconstruction error plus `kl_weight` x KL, both per image element.

  loss = mean(|recon - x|) (or mean squared error) + kl_weight * mean_B(KL) / (H * W * C).
  Dividing the per-example KL by the number of image elements gives `kl_weight` Stable
  Diffusion's meaning (SD sums the reconstruction error over pixels, e.g. kl_weight = 1e-6).
  No adversarial (GAN) or perceptual (LPIPS) term: this is the plain KL-autoencoder objective,
  so reconstructions of fine texture come out blurrier than SD's.

  Args:
    recon: `[B, H, W, C]` reconstruction.
    x: `[B, H, W, C]` target, same range as `recon` (e.g. [-1, 1]).
    posterior: the encoder's `DiagonalGaussian` for `x`.
    kl_weight: weight of the KL term (>= 0).
    reconstruction: "l1" or "l2".

  Returns:
    (scalar loss, {"reconstruction", "kl" (mean per-example KL, nats), "mse"} scalars).
  """
  if reconstruction not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"reconstruction must be one of {RECONSTRUCTION_LOSSES}, got "
                     f"{reconstruction!r}")
  if recon.shape != x.shape or x.ndim != 4:
    raise ValueError(f"recon and x must both be [B, H, W, C] of one shape, got {recon.shape} "
                     f"and {x.shape}")
  error = recon.astype(jnp.float32) - x.astype(jnp.float32)
  mse = jnp.mean(jnp.square(error))
  rec = jnp.mean(jnp.abs(error)) if reconstruction == "l1" else mse
  kl = jnp.mean(posterior.kl())
  elements = x.shape[1] * x.shape[2] * x.shape[3]
  loss = rec + kl_weight * kl / elements
  return loss, {"reconstruction": rec, "kl": kl, "mse": mse}


def sd_group_norm(num_groups: int, name: str, *, dtype: Dtype, param_dtype: Dtype
                  ) -> nn.GroupNorm:
  """diffusers' VAE GroupNorm (eps 1e-6, two-pass variance as PyTorch), params as `group_norm`."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=SD_NORM_EPSILON, use_fast_variance=False,
                      dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class SDResBlock(nn.Module):
  """Stable Diffusion's VAE ResBlock (diffusers `ResnetBlock2D` without a time embedding).

  GN -> SiLU -> conv -> GN -> SiLU -> conv, plus a 1x1 `skip` conv when the width changes:
  `x [B, H, W, Cin]` -> `[B, H, W, features]`. Param names are `ResBlock`'s (norm1, conv1, norm2,
  conv2, skip) without its time_proj.
  """
  features: int
  num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(sd_group_norm(self.num_groups, "norm1", **kw)(x))
    h = conv(self.features, "conv1", **kw)(h)
    h = nn.silu(sd_group_norm(self.num_groups, "norm2", **kw)(h))
    h = conv(self.features, "conv2", zero_init=True, **kw)(h)
    if x.shape[-1] != self.features:
      x = conv(self.features, "skip", kernel_size=1, **kw)(x)
    return x + h


class SDAttention(nn.Module):
  """Stable Diffusion's VAE mid-block attention: GN -> self-attention over the H * W positions
  -> + x (no MLP, no projections around it). `x [B, H, W, C]` -> `[B, H, W, C]`.

  Params: "norm" (scale, bias `[C]`) and "attention", a `MultiHeadAttention` (qkv kernel
  `[C, 3, heads, C / heads]`, out kernel `[heads, C / heads, C]`, with biases).
  """
  num_heads: int = 1
  num_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    h = sd_group_norm(self.num_groups, "norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    h = MultiHeadAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="attention")(h.reshape(batch, height * width, channels))
    return x + h.reshape(x.shape)


def _res_block(layout: str, features: int, num_groups: int, name: str, **kw):
  """The layout's ResBlock as `block(h, temb)` (the "sd" block ignores `temb`)."""
  if layout == "sd":
    block = SDResBlock(features, num_groups, name=name, **kw)
    return lambda h, temb: block(h)
  return ResBlock(features, num_groups=num_groups, name=name, **kw)


def _norm_out(layout: str, num_groups: int, **kw) -> nn.GroupNorm:
  """The layout's GroupNorm before an encoder's / decoder's conv_out."""
  norm = sd_group_norm if layout == "sd" else group_norm
  return norm(num_groups, "norm_out", **kw)


class _Middle(nn.Module):
  """ResBlock -> [self-attention] -> ResBlock at the lowest resolution."""
  features: int
  num_groups: int
  attention: bool
  num_heads: int
  dtype: Dtype
  param_dtype: Dtype
  layout: str = "mmjax"

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _res_block(self.layout, self.features, self.num_groups, "res_0", **kw)(h, temb)
    if self.attention and self.layout == "sd":
      h = SDAttention(self.num_heads, self.num_groups, name="attn", **kw)(h)
    elif self.attention:
      h = SpatialTransformer(self.num_heads, cross_attention=False, num_groups=self.num_groups,
                             name="attn", **kw)(h)
    return _res_block(self.layout, self.features, self.num_groups, "res_1", **kw)(h, temb)


def _constant_temb(h: jax.Array) -> jax.Array:
  """The `[B, 1]` all-ones stand-in for the time embedding `ResBlock` requires."""
  return jnp.ones((h.shape[0], 1), h.dtype)


class Encoder(nn.Module):
  """`x [B, H, W, Cin]` -> moments `[B, H/f, W/f, 2 * latent_channels]`, f = 2^(levels - 1)."""
  channels: tuple[int, ...]
  latent_channels: int
  num_res_blocks: int
  num_groups: int
  mid_attention: bool
  num_heads: int
  dtype: Dtype
  param_dtype: Dtype
  layout: str = "mmjax"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = conv(self.channels[0], "conv_in", **kw)(x.astype(self.dtype))
    temb = _constant_temb(h)
    last = len(self.channels) - 1
    for level, features in enumerate(self.channels):
      for i in range(self.num_res_blocks):
        h = _res_block(self.layout, features, self.num_groups, f"down_{level}_res_{i}",
                       **kw)(h, temb)
      if level != last:
        h = conv(features, f"down_{level}_downsample", strides=2, **kw)(h)
    h = _Middle(self.channels[-1], self.num_groups, self.mid_attention, self.num_heads,
                layout=self.layout, name="mid", **kw)(h, temb)
    h = nn.silu(_norm_out(self.layout, self.num_groups, **kw)(h))
    return conv(2 * self.latent_channels, "conv_out", **kw)(h)


class Decoder(nn.Module):
  """Latents `[B, h, w, latent_channels]` -> `[B, h f, w f, out_channels]` (mirror of Encoder)."""
  channels: tuple[int, ...]
  out_channels: int
  num_res_blocks: int
  num_groups: int
  mid_attention: bool
  num_heads: int
  dtype: Dtype
  param_dtype: Dtype
  layout: str = "mmjax"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = conv(self.channels[-1], "conv_in", **kw)(z.astype(self.dtype))
    temb = _constant_temb(h)
    h = _Middle(self.channels[-1], self.num_groups, self.mid_attention, self.num_heads,
                layout=self.layout, name="mid", **kw)(h, temb)
    for level in reversed(range(len(self.channels))):
      for i in range(self.num_res_blocks + 1):
        h = _res_block(self.layout, self.channels[level], self.num_groups,
                       f"up_{level}_res_{i}", **kw)(h, temb)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2, as UNet's up path
        h = conv(self.channels[level], f"up_{level}_upsample", **kw)(h)
    h = nn.silu(_norm_out(self.layout, self.num_groups, **kw)(h))
    return conv(self.out_channels, "conv_out", **kw)(h)


class KLAutoencoder(nn.Module):
  """Convolutional VAE with a diagonal Gaussian latent; see the module docstring.

  Attributes:
    channels: width of each resolution level, e.g. (32, 64, 64); the downsample factor is
      2^(len(channels) - 1) (SD v1: (128, 256, 512, 512), factor 8).
    latent_channels: latent channels c (SD: 4).
    in_channels: image channels C (also the decoder's output channels).
    num_res_blocks: ResBlocks per encoder level (decoder: one more).
    num_groups: GroupNorm groups; must divide every level width.
    mid_attention: a self-attention SpatialTransformer in both middle blocks.
    num_heads: its heads (must divide channels[-1]).
    scaling_factor: the multiplier `to_latents` / `from_latents` apply (1 / latent std).
    dtype / param_dtype: compute / parameter dtypes; outputs are float32.
    layout: "mmjax" (default) or "sd" (Stable Diffusion's blocks, for its checkpoints); see the
      module docstring.
  """
  channels: tuple[int, ...] = (32, 64, 64)
  latent_channels: int = 4
  in_channels: int = 3
  num_res_blocks: int = 1
  num_groups: int = 32
  mid_attention: bool = True
  num_heads: int = 1
  scaling_factor: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  layout: str = "mmjax"

  @property
  def downsample_factor(self) -> int:
    """Spatial factor f between images and latents: 2^(len(channels) - 1)."""
    return 2 ** (len(self.channels) - 1)

  def setup(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"KLAutoencoder.layout must be one of {LAYOUTS}, got {self.layout!r}")
    if not self.channels:
      raise ValueError("KLAutoencoder.channels must name at least one level width, e.g. (32, 64)")
    bad = sorted({c for c in self.channels if c % self.num_groups})
    if bad:
      raise ValueError(f"KLAutoencoder.num_groups={self.num_groups} must divide every level "
                       f"width; it does not divide {bad} (channels={tuple(self.channels)})")
    if self.mid_attention and self.channels[-1] % self.num_heads:
      raise ValueError(f"KLAutoencoder.num_heads={self.num_heads} must divide the middle width "
                       f"channels[-1]={self.channels[-1]}")
    shared = dict(channels=tuple(self.channels), num_res_blocks=self.num_res_blocks,
                  num_groups=self.num_groups, mid_attention=self.mid_attention,
                  num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                  layout=self.layout)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(latent_channels=self.latent_channels, **shared)
    self.quant_conv = conv(2 * self.latent_channels, "quant_conv", kernel_size=1, **kw)
    self.post_quant_conv = conv(self.latent_channels, "post_quant_conv", kernel_size=1, **kw)
    self.decoder = Decoder(out_channels=self.in_channels, **shared)

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    """Images `[B, H, W, in_channels]` (H, W divisible by f) -> posterior over `[B, H/f, W/f, c]`."""
    x = jnp.asarray(x)
    factor = self.downsample_factor
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"KLAutoencoder.encode expects images [B, H, W, {self.in_channels}] "
                       f"(in_channels={self.in_channels}), got shape {x.shape}")
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"KLAutoencoder image size {x.shape[1]}x{x.shape[2]} must be divisible by "
                       f"the downsample factor {factor} = 2^(len(channels) - 1) for "
                       f"channels={tuple(self.channels)}")
    moments = self.quant_conv(self.encoder(x))
    return DiagonalGaussian.from_moments(moments)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents `[B, h, w, latent_channels]` -> images `[B, h f, w f, in_channels]` f32."""
    z = jnp.asarray(z)
    if z.ndim != 4 or z.shape[-1] != self.latent_channels:
      raise ValueError(f"KLAutoencoder.decode expects latents [B, h, w, {self.latent_channels}] "
                       f"(latent_channels={self.latent_channels}), got shape {z.shape}")
    return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

  def __call__(self, x: jax.Array, key: jax.Array | None = None
               ) -> tuple[jax.Array, DiagonalGaussian]:
    """(reconstruction `[B, H, W, in_channels]` f32, posterior) of images `x [B, H, W, C]`.

    Decodes a posterior sample drawn with `key` (training), or the mode if `key` is None.
    """
    posterior = self.encode(x)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z), posterior

  def to_latents(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Diffusion-ready latents `scaling_factor * z` `[B, H/f, W/f, c]` (z sampled, or the mode)."""
    posterior = self.encode(x)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.scaling_factor * z

  def from_latents(self, latents: jax.Array) -> jax.Array:
    """Inverse of `to_latents`: decodes `latents / scaling_factor` to `[B, H, W, in_channels]`."""
    return self.decode(jnp.asarray(latents) / self.scaling_factor)
