"""KV-cached decoding of image-conditioned text decoders (Captioner, BLIP): one implementation.

Both models implement their `init_cache` / `decode_step` (the `mmjax.decoding` step-function
interface) with the functions here:

    cache = model.init_cache(params, images, max_length=P + N)   # encodes the images once
    step_fn = functools.partial(model.decode_step, params)
    out = decoding.greedy(step_fn, cache, prompt, max_new_tokens=N, eos_id=EOS)

A model supplies two methods: `encode(images) -> image_tokens` and `decode(tokens,
image_tokens, positions) -> logits`, the latter cross-attending to the image tokens and
KV-cached when the model is cloned with `decode=True`. An encoder that also reads text (OFA's,
over [image; instruction]) takes it as `encode(images, *encoder_inputs)` and returns
`(tokens, mask)`; the mask (False at padding) is kept in the cache and passed on as
`decode(tokens, image_tokens, positions, mask)`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


class DecodingCache(NamedTuple):
  """Decoding state for B rows (every leaf batch-first, so beam search can expand and reorder
  the image conditioning with the rows).

  Attributes:
    image_tokens: `[B, S, vision_width]` encoder output the decoder cross-attends to.
    kv: the decoder's Flax "cache" collection: per layer the self-attention's `SlotKVCache`
      "kv" (`max_length` slots per row) and the cross-attention's `ContextKVCache` "cross_kv"
      (the image tokens' K/V, one copy per group of rows decoding the same image).
  """
  image_tokens: jax.Array
  kv: PyTree
  context_mask: jax.Array | None = None


def init_cache(model: nn.Module, params: PyTree, images: jax.Array, max_length: int, *,
               encode: Callable, decode: Callable,
               encoder_inputs: tuple = ()) -> DecodingCache:
  """Encodes `images` `[B, H, W, 3]` once; an empty cache for `max_length` positions.

  Args:
    model: a module with fields `max_length` (its learned text positions) and `decode`.
    encode: the model's method (images, *encoder_inputs) -> image tokens `[B, S, Dv]`, or
      (tokens `[B, S, Dv]`, mask bool `[B, S]`).
    decode: the model's method (tokens, image_tokens, positions[, mask]) -> logits.
    max_length: prompt + new tokens, in [1, model.max_length].
    encoder_inputs: more encoder inputs after the images (OFA: the instruction tokens).
  """
  if not 0 < max_length <= model.max_length:
    raise ValueError(f"cache max_length must be in [1, {model.max_length}] (the model's "
                     f"learned text positions), got {max_length}")
  encoded = model.apply({"params": params}, images, *encoder_inputs, method=encode)
  image_tokens, context_mask = encoded if isinstance(encoded, tuple) else (encoded, None)
  batch = image_tokens.shape[0]
  tokens = jnp.zeros((batch, max_length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(max_length, dtype=jnp.int32), (batch, max_length))
  # A decoder call on an empty "cache" collection allocates it: the self-attention caches
  # (left zero) sized by these max_length dummy tokens, and every layer's cross-attention K/V
  # projected from the image tokens once, which every step then reuses. Only the cache is
  # kept, so under jit XLA drops the rest of this pass.
  _, kv = _apply_decoder(model, params, {}, tokens, image_tokens, positions, decode,
                         context_mask)
  return DecodingCache(image_tokens, kv, context_mask)


def decode_step(model: nn.Module, params: PyTree, tokens: jax.Array, cache: DecodingCache,
                positions: jax.Array, *, decode: Callable) -> tuple[jax.Array, DecodingCache]:
  """The `mmjax.decoding` step function of `model` (see `init_cache` for `decode`).

  Args:
    tokens: int `[B, T]`; positions: int `[B, T]` their absolute positions (cache slots).
    cache: a `DecodingCache` for B rows.
  Returns:
    logits float32 `[B, T, V]` and the updated cache.
  """
  if tokens.ndim != 2 or positions.shape != tokens.shape:
    raise ValueError(f"tokens and positions must both be int [B, T], got shapes "
                     f"{tokens.shape} and {positions.shape}")
  logits, kv = _apply_decoder(model, params, cache.kv, tokens, cache.image_tokens, positions,
                              decode, cache.context_mask)
  return logits, DecodingCache(cache.image_tokens, kv, cache.context_mask)


def _apply_decoder(model, params, kv, tokens, image_tokens, positions, decode, context_mask):
  """(logits `[B, T, V]`, updated "cache" collection) of the KV-cached decoder."""
  masks = () if context_mask is None else (context_mask,)
  logits, variables = model.clone(decode=True).apply(
      {"params": params, "cache": kv}, tokens, image_tokens, positions, *masks, method=decode,
      mutable=["cache"])
  return logits, variables["cache"]
