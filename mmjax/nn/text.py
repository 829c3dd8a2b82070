"""Transformer text encoder over token ids."""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.attention import make_padding_mask
from mmjax.nn.transformer import DEFAULT_LAYER_NORM_EPSILON, Transformer

Dtype = Any

POOLS = ("eos", "first", "mean", "last")


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
      non-padding tokens (BERT-style encoders), or over all tokens without `padding_mask`.
    padding_mask: with bidirectional attention, hide the `pad_id` tokens from every query
      (default). False: every token attends to every token, padding included, as SigLIP's
      text tower was trained (it pads to a fixed length and never masks).
    pool: "eos" (feature at the first `eos_id`, as CLIP), "first" (BOS/[CLS] position),
      "mean" (mean over non-padding tokens) or "last" (the last position, padding or not: SigLIP,
      whose text is padded to the full length with its eos id).
    cross_attention: every block also cross-attends to a `context` (e.g. image tokens): the
      image-grounded text encoder of BLIP's ITM head, VQA and grounding fusion.
    decoder_attention: every block also holds this causal self-attention, run instead of the
      `causal`/bidirectional one on `decoder=True` calls, all other parameters shared (BLIP's
      encoder and LM decoder in one stack); see `TransformerBlock`.
    context_optional: with `cross_attention`, calls without `context` skip the
      cross-attention (BLIP's unimodal text encoder) instead of raising.
    decode: KV-cached causal self-attention at per-row `positions` (autoregressive decoding);
      see `MultiHeadAttention`.
    mlp_activation: "gelu" or "quick_gelu" (OpenAI CLIP), see `MlpBlock`.
    layer_norm_epsilon: epsilon of every LayerNorm (the blocks', ln_final); open_clip's is 1e-5.
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
  cross_attention: bool = False
  decoder_attention: str | None = None
  context_optional: bool = False
  decode: bool = False
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON
  padding_mask: bool = True

  @nn.compact
  def __call__(self, tokens: jax.Array, context: jax.Array | None = None,
               context_valid: jax.Array | None = None, *, decoder: bool = False,
               positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes token ids `[B, L]` (L <= context_length).

    Args:
      tokens: int `[B, L]`.
      context: `[B, S, Dc]` tokens to cross-attend to; required iff `cross_attention` (unless
        `context_optional`).
      context_valid: optional bool `[B, S]`, False at context tokens to ignore.
      decoder: run the causal `decoder_attention` of every block instead of its "self_attn".
      positions: int `[B, L]` absolute positions (KV-cache slots); required when decoding.
    Returns:
      features `[B, L, width]` and pooled `[B, width]`.
    """
    chex.assert_rank(tokens, 2)
    length = tokens.shape[1]
    if length > self.context_length:
      raise ValueError(f"text has {length} tokens, more than context_length={self.context_length}")
    if decoder and self.decoder_attention is None:
      raise ValueError("decoder=True needs a TextTransformer built with decoder_attention=<name>")
    causal = self.causal or decoder
    if self.decode and (positions is None or not causal):
      raise ValueError("a decode=True TextTransformer needs causal self-attention (causal=True "
                       "or decoder=True) and positions int [B, L]")
    x = embed_tokens(self, tokens, vocab_size=self.vocab_size, width=self.width,
                     max_length=self.context_length, positions=positions)
    context_required = self.cross_attention and not self.context_optional
    if (context is None and context_required) or (context is not None and not self.cross_attention):
      raise ValueError(f"cross_attention={self.cross_attention} but context is "
                       f"{'missing' if context is None else 'given'}")
    if context is not None and (context.ndim != 3 or context.shape[0] != tokens.shape[0]):
      raise ValueError(f"context must be [B={tokens.shape[0]}, S, D], got shape {context.shape}")
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
    valid = tokens != self.pad_id
    # Causal attention needs no padding mask: padding only ever follows the real tokens.
    mask = None if causal or not self.padding_mask else make_padding_mask(valid, valid)
    context_mask = None
    if context_valid is not None:
      context_mask = make_padding_mask(jnp.ones_like(valid), context_valid)
    x = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                    cross_attention=self.cross_attention, dtype=self.dtype,
                    param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                    decode=self.decode, remat=self.remat and not self.decode,
                    gelu_approximate=self.gelu_approximate,
                    decoder_attention=self.decoder_attention,
                    context_optional=self.context_optional,
                    mlp_activation=self.mlp_activation,
                    layer_norm_epsilon=self.layer_norm_epsilon,
                    name="transformer")(x, context, mask=mask, context_mask=context_mask,
                                        causal=causal, positions=positions, decoder=decoder)
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
      pooled = x[:, -1]
    return x, pooled
