"""Image captioner: ViT encoder + causal text decoder cross-attending to the image tokens.

Training uses `Captioner.__call__` (teacher forcing) and `mmjax.losses.caption_loss`. Decoding
uses the `mmjax.decoding` step-function interface (implemented once, for BLIP too, in
`mmjax.models.decoding_cache`):

    cache = model.init_cache(params, images, max_length=P + N)   # encodes the images once
    step_fn = functools.partial(model.decode_step, params)
    out = decoding.beam_search(step_fn, cache, prompt, prompt_lengths, num_beams=4, ...)

The cache (`CaptionCache`, i.e. `decoding_cache.DecodingCache`) holds the image tokens, the
decoder's self-attention K/V and its cross-attention K/V (projected from the image tokens
once, in `init_cache`), every leaf batch-first, so beam search expands and reorders the image
conditioning with the rows.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import decoding_cache
from mmjax.nn.text import embed_tokens
from mmjax.nn.transformer import Transformer, dense
from mmjax.nn.vit import VisionTransformer

Dtype = Any
PyTree = Any

# The Captioner's name for the one image-conditioned decoding cache.
CaptionCache = decoding_cache.DecodingCache


class TextDecoder(nn.Module):
  """Token + learned position embeddings -> causal transformer [+ cross-attention] -> LM head.

  Attributes:
    max_length: number of learned positions (longest sequence the decoder accepts).
    cross_attention: cross-attend to `context` in every block (False: a decoder-only LM).
    decode: KV-cached self-attention at per-row `positions` (see `MultiHeadAttention`).
  """
  vocab_size: int
  max_length: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  cross_attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  remat: bool = False
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, tokens: jax.Array, context: jax.Array | None = None,
               positions: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: int `[B, T]`.
      context: `[B, S, Dc]` tokens to cross-attend to (if `cross_attention`).
      positions: int `[B, T]` absolute positions (required in decode mode); default 0..T-1.
      context_mask: bool `[B, S]`, False at context tokens no one attends to (padding);
        default all attended.
    Returns:
      logits `[B, T, vocab_size]` in float32.
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be int [B, T], got shape {tokens.shape}")
    if self.decode and positions is None:
      raise ValueError("a decode=True TextDecoder needs positions int [B, T]")
    x = embed_tokens(self, tokens, vocab_size=self.vocab_size, width=self.width,
                     max_length=self.max_length, positions=positions)
    x = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                    cross_attention=self.cross_attention, dtype=self.dtype,
                    param_dtype=self.param_dtype, attention_impl=self.attention_impl,
                    decode=self.decode, remat=self.remat and not self.decode,
                    gelu_approximate=self.gelu_approximate,
                    name="transformer")(
                        x, context, causal=True, positions=positions,
                        context_mask=None if context_mask is None else context_mask[:, None, None])
    logits = dense(self.vocab_size, "lm_head", ("embed", "vocab"), dtype=self.dtype,
                   param_dtype=self.param_dtype)(x)
    return logits.astype(jnp.float32)


class Captioner(nn.Module):
  """ViT image encoder + `TextDecoder` with cross-attention to all image tokens.

  Attributes:
    vocab_size: V (pad 0, bos 1, eos 2 with mmjax's word tokenizer).
    max_length: the decoder's learned positions: the longest caption, prompt included.
    patch_size, vision_width, vision_layers, vision_heads, stem_channels: the ViT.
    text_width, text_layers, text_heads: the decoder.
    decode: build the KV-cached decoder; set by `init_cache`/`decode_step`, not by users.
  """
  vocab_size: int
  max_length: int
  patch_size: int = 8
  vision_width: int = 128
  vision_layers: int = 2
  vision_heads: int = 4
  text_width: int = 128
  text_layers: int = 2
  text_heads: int = 4
  mlp_ratio: float = 4.0
  stem_channels: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  decode: bool = False

  def setup(self):
    self.image_encoder = VisionTransformer(
        self.patch_size, self.vision_width, self.vision_layers, self.vision_heads,
        self.mlp_ratio, dtype=self.dtype, param_dtype=self.param_dtype,
        attention_impl=self.attention_impl, remat=self.remat,
        stem_channels=tuple(self.stem_channels))
    self.text_decoder = TextDecoder(
        self.vocab_size, self.max_length, self.text_width, self.text_layers, self.text_heads,
        self.mlp_ratio, cross_attention=True, dtype=self.dtype, param_dtype=self.param_dtype,
        attention_impl=self.attention_impl, decode=self.decode, remat=self.remat)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` -> image tokens `[B, 1 + N, vision_width]` (class token first)."""
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    tokens, _ = self.image_encoder(images)
    return tokens

  def decode_tokens(self, tokens: jax.Array, image_tokens: jax.Array,
                    positions: jax.Array | None = None) -> jax.Array:
    """Logits `[B, T, V]` of `tokens` `[B, T]` given encoded `image_tokens` `[B, S, Wv]`."""
    return self.text_decoder(tokens, image_tokens, positions)

  def __call__(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
    """Teacher forcing: logits `[B, L, V]`, row t scoring P(w_{t+1} | w_<=t, image).

    Args:
      images: `[B, H, W, 3]` float.
      tokens: int `[B, L]`, L <= max_length, usually BOS + caption + EOS + padding.
    """
    _check_tokens(tokens, self.max_length)
    image_tokens = self.encode_image(images)
    if image_tokens.shape[0] != tokens.shape[0]:
      raise ValueError(f"images and tokens must have the same batch size, got "
                       f"{image_tokens.shape[0]} and {tokens.shape[0]}")
    return self.decode_tokens(tokens, image_tokens)

  @nn.nowrap
  def init_cache(self, params: PyTree, images: jax.Array, max_length: int) -> CaptionCache:
    """Encodes `images` `[B, H, W, 3]` once; returns an empty cache for `max_length` positions.

    `max_length` (prompt + new tokens) must not exceed the model's `max_length`.
    """
    return decoding_cache.init_cache(self, params, images, max_length,
                                     encode=Captioner.encode_image,
                                     decode=Captioner.decode_tokens)

  @nn.nowrap
  def decode_step(self, params: PyTree, tokens: jax.Array, cache: CaptionCache,
                  positions: jax.Array) -> tuple[jax.Array, CaptionCache]:
    """The `mmjax.decoding` step function (bind `params` with `functools.partial`).

    Args:
      tokens: int `[B, T]`; positions: int `[B, T]` their absolute positions (cache slots).
      cache: a `CaptionCache` for B rows.
    Returns:
      logits `[B, T, V]` float32 and the updated cache.
    """
    return decoding_cache.decode_step(self, params, tokens, cache, positions,
                                      decode=Captioner.decode_tokens)


def _check_tokens(tokens: jax.Array, max_length: int) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be int [B, L], got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
  if tokens.shape[1] > max_length:
    raise ValueError(f"tokens have length {tokens.shape[1]}, more than the decoder's "
                     f"max_length={max_length}")
