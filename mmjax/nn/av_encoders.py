"""Audio and video encoders that return per-time tokens as well as a pooled embedding.

`AudioSpectrogramTransformer` (AST-style): a log-mel spectrogram `[B, n_mels, frames]` is cut
into square `patch_size` patches (frequency x time) and encoded by the one `VisionTransformer`
(the spectrogram is a one-channel image, frequency as rows, time as columns). Per-time tokens are
the mean of each time column's patch tokens: `[B, frames / patch_size, W]`.

`VideoTransformer` (factorised space-time): one `VisionTransformer` shared by every frame, then
a temporal `Transformer` over the frames' pooled vectors plus learned time embeddings. Per-time
tokens `[B, T, W]` come out of the temporal stack; the patch tokens of every frame
`[B, T, N, W]` stay available for localisation heatmaps.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.transformer import DEFAULT_LAYER_NORM_EPSILON, Transformer
from mmjax.nn.vit import VisionTransformer

Dtype = Any


class AudioSpectrogramTransformer(nn.Module):
  """Log-mel spectrogram -> (per-time tokens, pooled).

  Attributes:
    patch_size: side of the square (frequency x time) patches; n_mels and frames must be
      divisible by it.
    db_offset, db_scale: the input (dB, e.g. `power_to_db` output in [-80, 0]) is mapped to
      `(x + db_offset) / db_scale` first, so it is of unit scale.
    pool: "gap" (mean of the patch tokens) or "cls".
  """
  patch_size: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  pool: str = "gap"
  db_offset: float = 40.0
  db_scale: float = 40.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, log_mel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`log_mel` `[B, n_mels, frames]` -> per-time tokens `[B, frames / p, W]`, pooled `[B, W]`."""
    chex.assert_rank(log_mel, 3)
    _, n_mels, frames = log_mel.shape
    p = self.patch_size
    if n_mels % p or frames % p:
      raise ValueError(f"log-mel of {n_mels} mels x {frames} frames is not divisible by "
                       f"patch_size={p}")
    x = ((log_mel + self.db_offset) / self.db_scale)[..., None]
    tokens, pooled = VisionTransformer(
        p, self.width, self.num_layers, self.num_heads, self.mlp_ratio, pool=self.pool,
        dtype=self.dtype, param_dtype=self.param_dtype, attention_impl=self.attention_impl,
        remat=self.remat, gelu_approximate=self.gelu_approximate,
        mlp_activation=self.mlp_activation, layer_norm_epsilon=self.layer_norm_epsilon,
        name="vit")(x)
    grid = tokens[:, 1:].reshape(tokens.shape[0], n_mels // p, frames // p, self.width)
    return grid.mean(axis=1), pooled


class VideoTransformer(nn.Module):
  """Frames `[B, T, S, S, 3]` -> per-time tokens, pooled and per-frame patch tokens.

  Attributes:
    patch_size, stem_channels, width, num_layers, num_heads: the per-frame ViT.
    temporal_layers: transformer blocks over the T frame vectors (0: none, the per-time tokens
      are the frame vectors).
    frame_pool: how the per-frame ViT pools its tokens ("gap" or "cls").
  """
  patch_size: int
  width: int
  num_layers: int
  num_heads: int
  max_frames: int = 16
  temporal_layers: int = 1
  mlp_ratio: float = 4.0
  stem_channels: tuple[int, ...] = ()
  frame_pool: str = "gap"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, frames: jax.Array) -> dict[str, jax.Array]:
    """Encodes a clip.

    Args:
      frames: float `[B, T, S, S, 3]`, T <= max_frames.
    Returns:
      "per_time" `[B, T, W]`, "pooled" `[B, W]` (mean over time of "per_time") and "patches"
      `[B, T, N, W]` (each frame's patch tokens, class token dropped).
    """
    chex.assert_rank(frames, 5)
    batch, num_frames = frames.shape[:2]
    if num_frames > self.max_frames:
      raise ValueError(f"clip has {num_frames} frames, more than max_frames={self.max_frames}")
    tokens, frame_vectors = VisionTransformer(
        self.patch_size, self.width, self.num_layers, self.num_heads, self.mlp_ratio,
        pool=self.frame_pool, dtype=self.dtype, param_dtype=self.param_dtype,
        attention_impl=self.attention_impl, remat=self.remat,
        gelu_approximate=self.gelu_approximate, stem_channels=tuple(self.stem_channels),
        mlp_activation=self.mlp_activation, layer_norm_epsilon=self.layer_norm_epsilon,
        name="frame_vit")(frames.reshape((batch * num_frames,) + frames.shape[2:]))
    patches = tokens[:, 1:].reshape(batch, num_frames, -1, self.width)
    x = frame_vectors.reshape(batch, num_frames, self.width)
    if self.temporal_layers:
      time_embed = self.param("time_embed", nn.with_logical_partitioning(
          initializers.embedding, (None, "embed")), (self.max_frames, self.width),
          self.param_dtype)
      x = x + time_embed[:num_frames].astype(x.dtype)[None]
      x = Transformer(self.temporal_layers, self.num_heads, int(self.width * self.mlp_ratio),
                      dtype=self.dtype, param_dtype=self.param_dtype,
                      attention_impl=self.attention_impl, gelu_approximate=self.gelu_approximate,
                      mlp_activation=self.mlp_activation,
                      layer_norm_epsilon=self.layer_norm_epsilon, name="temporal")(x)
    return {"per_time": x, "pooled": x.mean(axis=1), "patches": patches}
