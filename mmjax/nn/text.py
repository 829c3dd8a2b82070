"""Transformer text encoder over token ids."""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.attention import make_padding_mask
from mmjax.nn.transformer import Transformer

Dtype = Any


class TextTransformer(nn.Module):
  """Token + position embeddings -> transformer -> per-token features and a pooled vector.

  Attributes:
    causal: causal self-attention (CLIP's text tower); otherwise bidirectional over the
      non-padding tokens (BERT-style encoders).
    pool: "eos" (feature at the first `eos_id`, as CLIP), "first" (BOS/[CLS] position) or
      "mean" (mean over non-padding tokens).
  """
  vocab_size: int
  context_length: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  causal: bool = True
  pool: str = "eos"
  pad_id: int = 0
  eos_id: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids `[B, L]` (L <= context_length).

    Returns:
      features `[B, L, width]` and pooled `[B, width]`.
    """
    chex.assert_rank(tokens, 2)
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(f"text has {length} tokens, more than context_length={self.context_length}")
    embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                     embedding_init=nn.with_logical_partitioning(initializers.embedding,
                                                                 ("vocab", "embed")),
                     name="token_embed")
    pos = self.param("pos_embed", nn.with_logical_partitioning(initializers.embedding,
                                                               (None, "embed")),
                     (self.context_length, self.width), self.param_dtype)
    x = embed(tokens) + pos[:length].astype(self.dtype)
    valid = tokens != self.pad_id
    mask = None if self.causal else make_padding_mask(valid, valid)
    x = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                    dtype=self.dtype, param_dtype=self.param_dtype,
                    attention_impl=self.attention_impl, remat=self.remat,
                    gelu_approximate=self.gelu_approximate,
                    name="transformer")(x, mask=mask, causal=self.causal)
    if self.pool == "eos":
      # Rows without an EOS (over-long, truncated text) fall back to the last position.
      has_eos = (tokens == self.eos_id).any(axis=1)
      index = jnp.where(has_eos, jnp.argmax(tokens == self.eos_id, axis=1), length - 1)
      pooled = jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
    elif self.pool == "first":
      pooled = x[:, 0]
    elif self.pool == "mean":
      weights = valid.astype(x.dtype)[..., None]
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
    else:
      raise ValueError(f"pool must be 'eos', 'first' or 'mean', got {self.pool!r}")
    return x, pooled
