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


def embed_tokens(module: nn.Module, tokens: jax.Array, *, vocab_size: int, width: int,
                 max_length: int, positions: jax.Array | None = None) -> jax.Array:
  """Token + learned absolute position embeddings, created inside `module`'s compact call.

  Args:
    module: the calling module; it gets the params "token_embed" `[V, width]` and
      "pos_embed" `[max_length, width]`.
    tokens: int `[B, T]`, T <= max_length.
    positions: int `[B, T]` absolute positions (decoding); default 0..T-1.
  Returns:
    `[B, T, width]` in `module.dtype`.
  """
  embed = nn.Embed(vocab_size, width, dtype=module.dtype, param_dtype=module.param_dtype,
                   embedding_init=nn.with_logical_partitioning(initializers.embedding,
                                                               ("vocab", "embed")),
                   parent=module, name="token_embed")
  pos_embed = module.param("pos_embed", nn.with_logical_partitioning(initializers.embedding,
                                                                     (None, "embed")),
                           (max_length, width), module.param_dtype)
  if positions is None:
    pos = pos_embed[:tokens.shape[1]][None]
  else:
    pos = jnp.take(pos_embed, positions, axis=0, mode="clip")
  return embed(tokens) + pos.astype(module.dtype)


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
    x = embed_tokens(self, tokens, vocab_size=self.vocab_size, width=self.width,
                     max_length=self.context_length)
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
