"""Vision Transformer image encoder."""
from __future__ import annotations

from typing import Any

import chex
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.transformer import Transformer, dense, layer_norm

Dtype = Any


class VisionTransformer(nn.Module):
  """ViT: non-overlapping patches -> linear embedding -> [CLS] + positions -> transformer.

  The patch embedding is a reshape followed by one matmul, which equals a stride-`patch_size`
  convolution but maps to a single GEMM (faster on CPU).

  Attributes:
    pool: "cls" (LayerNorm'd class token, as CLIP) or "gap" (mean over patch tokens).
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

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes images.

    Args:
      images: `[B, H, W, C]` float, H and W divisible by `patch_size`.
    Returns:
      tokens `[B, 1 + N, width]` (class token first) and pooled `[B, width]`.
    """
    chex.assert_rank(images, 4)
    _, height, width, _ = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"image size {height}x{width} is not divisible by patch_size={p}")
    patches = einops.rearrange(images, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
    x = dense(self.width, "patch_embed", (None, "embed"), dtype=self.dtype,
              param_dtype=self.param_dtype)(patches.astype(self.dtype))
    cls = self.param("cls_token", nn.with_logical_partitioning(initializers.embedding, ("embed",)),
                     (self.width,), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width)), x],
                        axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(initializers.embedding,
                                                               (None, "embed")),
                     (x.shape[1], self.width), self.param_dtype)
    x = layer_norm("ln_pre", self.dtype, self.param_dtype)(x + pos.astype(self.dtype))
    x = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                    dtype=self.dtype, param_dtype=self.param_dtype,
                    attention_impl=self.attention_impl, remat=self.remat,
                    gelu_approximate=self.gelu_approximate, name="transformer")(x)
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "gap":
      pooled = x[:, 1:].mean(axis=1)
    else:
      raise ValueError(f"pool must be 'cls' or 'gap', got {self.pool!r}")
    return x, pooled
