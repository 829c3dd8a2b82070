"""Vision Transformer image encoder."""
from __future__ import annotations

from typing import Any

import chex
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.attention import MultiHeadAttention
from mmjax.nn.transformer import (DEFAULT_LAYER_NORM_EPSILON, MlpBlock, Transformer, dense,
                                  layer_norm)

Dtype = Any


class StridedConv3x3(nn.Module):
  """3x3 convolution, stride 2, SAME padding: `[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), F]`.

  Computed as nine strided slices concatenated (im2col) and one matmul with the kernel
  `[3, 3, C, F]` reshaped to `[9C, F]`. Numerically this is a plain GEMM, so results are
  bit-identical whatever the number of host devices or threads (XLA CPU's convolution is not,
  which would break bit-exact resume across processes), and it is faster than XLA's CPU
  convolution for the few channels of a stem.
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, height, width, channels = x.shape
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.he_normal(),
                                                               (None, None, None, None)),
                        (3, 3, channels, self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                      (self.features,), self.param_dtype)
    out_h, out_w = -(-height // 2), -(-width // 2)
    pad_h, pad_w = 2 * (out_h - 1) + 3 - height, 2 * (out_w - 1) + 3 - width
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                                       (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    cols = [x[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2, :]
            for i in range(3) for j in range(3)]
    patches = jnp.concatenate(cols, axis=-1)  # (i, j, c) order = the kernel's row-major order
    kernel = kernel.reshape(9 * channels, self.features).astype(self.dtype)
    return patches @ kernel + bias.astype(self.dtype)


class ConvStem(nn.Module):
  """Stride-2 3x3 convolutions with ReLU ("early convolutions", Xiao et al. 2021).

  `[B, H, W, C] -> [B, H / 2^k, W / 2^k, channels[-1]]` for k = len(channels). Replaces the
  ViT's one-layer patchify stem: a few cheap convolutions give the tokens local shape features,
  which makes small ViTs learn shape much faster from little data.
  """
  channels: tuple[int, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for i, features in enumerate(self.channels):
      x = nn.relu(StridedConv3x3(features, self.dtype, self.param_dtype, name=f"conv{i}")(x))
    return x


POOLS = ("cls", "gap", "map")


class MAPHead(nn.Module):
  """Multihead attention pooling: `tokens [B, T, W] -> [B, W]`.

  A learned probe `[1, 1, W]` is the one query of a cross-attention over the tokens (keys and
  values), then `x + MLP(LN(x))`; the probe's row is the pooled vector. This is big_vision's
  `MAPHead` and Hugging Face's `SiglipMultiheadAttentionPoolingHead` (SigLIP's image pooling).
  Params: "probe", "attn" (`MultiHeadAttention`'s cross-attention layout: query, kv, out),
  "ln", "mlp" (fc1, fc2).
  """
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  gelu_approximate: bool = True
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    chex.assert_rank(tokens, 3)
    batch, _, width = tokens.shape
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                             (None, None, "embed")),
                       (1, 1, width), self.param_dtype)
    query = jnp.broadcast_to(probe.astype(self.dtype), (batch, 1, width))
    x = MultiHeadAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                           implementation=self.attention_impl, name="attn")(
                               query, tokens.astype(self.dtype))
    h = layer_norm("ln", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    x = x + MlpBlock(self.mlp_dim, self.dtype, self.param_dtype,
                     gelu_approximate=self.gelu_approximate, mlp_activation=self.mlp_activation,
                     name="mlp")(h)
    return x[:, 0]


class VisionTransformer(nn.Module):
  """ViT: non-overlapping patches -> linear embedding -> [CLS] + positions -> transformer.

  The patch embedding is a reshape followed by one matmul, which equals a stride-`patch_size`
  convolution but maps to a single GEMM (faster on CPU).

  Attributes:
    pool: "cls" (LayerNorm'd class token, as CLIP), "gap" (mean over the patch tokens) or
      "map" (a `MAPHead` over all tokens of the LayerNorm'd output, as SigLIP).
    class_token: prepend a learned [CLS] token ("cls_token"); SigLIP's towers have none
      (then "cls" pooling is refused).
    pre_norm: LayerNorm ("ln_pre") the embedded tokens before the blocks, as CLIP; SigLIP /
      big_vision ViTs have none.
    stem_channels: () for the plain patchify stem; else a `ConvStem` with these channels runs
      first and `patch_size` then applies to its output (image size / 2^len(stem_channels)).
    mlp_activation: "gelu" or "quick_gelu" (OpenAI CLIP), see `MlpBlock`.
    layer_norm_epsilon: epsilon of every LayerNorm (ln_pre, the blocks', ln_final); open_clip's
      is 1e-5.
  """
  patch_size: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  pool: str = "cls"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  stem_channels: tuple[int, ...] = ()
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON
  class_token: bool = True
  pre_norm: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes images.

    Args:
      images: `[B, H, W, C]` float, H and W divisible by `patch_size * 2^len(stem_channels)`.
    Returns:
      tokens `[B, 1 + N, width]` (class token first; `[B, N, width]` without `class_token`)
      and pooled `[B, width]`.
    """
    chex.assert_rank(images, 4)
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
    if self.pool == "cls" and not self.class_token:
      raise ValueError("pool='cls' needs class_token=True; without a class token use 'gap' or "
                       "'map'")
    _, height, width, _ = images.shape
    p = self.patch_size
    stride = p * 2 ** len(self.stem_channels)
    if height % stride or width % stride:
      raise ValueError(f"image size {height}x{width} is not divisible by patch_size={p} times "
                       f"the conv stem's stride {2 ** len(self.stem_channels)}")
    if self.stem_channels:
      images = ConvStem(tuple(self.stem_channels), self.dtype, self.param_dtype,
                        name="stem")(images)
    patches = einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
    x = dense(self.width, "patch_embed", (None, "embed"), dtype=self.dtype,
              param_dtype=self.param_dtype)(patches.astype(self.dtype))
    if self.class_token:
      cls = self.param("cls_token", nn.with_logical_partitioning(initializers.embedding,
                                                                 ("embed",)),
                       (self.width,), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width)),
                           x], axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(initializers.embedding,
                                                               (None, "embed")),
                     (x.shape[1], self.width), self.param_dtype)
    x = x + pos.astype(self.dtype)
    if self.pre_norm:
      x = layer_norm("ln_pre", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    x = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                    dtype=self.dtype, param_dtype=self.param_dtype,
                    attention_impl=self.attention_impl, remat=self.remat,
                    gelu_approximate=self.gelu_approximate, mlp_activation=self.mlp_activation,
                    layer_norm_epsilon=self.layer_norm_epsilon, name="transformer")(x)
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "gap":
      pooled = x[:, int(self.class_token):].mean(axis=1)
    else:
      pooled = MAPHead(self.num_heads, int(self.width * self.mlp_ratio), dtype=self.dtype,
                       param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                       gelu_approximate=self.gelu_approximate,
                       mlp_activation=self.mlp_activation,
                       layer_norm_epsilon=self.layer_norm_epsilon, name="map_head")(x)
    return x, pooled
