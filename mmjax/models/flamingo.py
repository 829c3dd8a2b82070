"""Flamingo (Alayrac et al. 2022): a frozen decoder-only LM reading interleaved images and text.

    media_latents = resampler(vision_encoder(images))          [B, M, R, Wv]
    x = embed(tokens)                                            [B, L, D]
    for every LM layer i:
      if (i + 1) % cross_attn_every == 0: x = gated_xattn_i(x, media_latents, tokens == <image>)
      x = block_i(x)                                             (frozen, causal)
    logits = [lm_head(LN(x)), new_token_head(LN(x))]             [B, L, V + num_new_tokens]

The gated blocks are placed as open_flamingo places them (before layers n-1, 2n-1, ... for
n = cross_attn_every). The i-th `<image>` token of a row stands for image i of that row; text
attends only to its latest image (see `mmjax.nn.gated_cross_attention`).

Parameter layout. The LM's parameters sit exactly where `captioner.TextDecoder(cross_attention=
False)` keeps them: "token_embed", "pos_embed", "transformer"/"block_i", "transformer"/
"ln_final", "lm_head" (a causal `TextTransformer` has the same minus "lm_head"), so
`load_lm_params(params, text_decoder_params)` drops a trained mmjax decoder in; the gated
blocks live beside them as "transformer"/"gated_xattn_i". The vision encoder is
"vision_encoder", the resampler "resampler".

Decoding (the `mmjax.decoding` step-function interface, as the Captioner's):

    cache = model.init_cache(params, images, max_length)   # images resampled once
    decoding.greedy(functools.partial(model.decode_step, params), cache, prompt, ...)

The cache holds the media latents, every LM block's self-attention K/V, every gated block's
media K/V (projected once) and each row's count of `<image>` tokens fed so far, which is how
a token of a later step knows its latest image.

New tokens (`<image>`, end-of-chunk, ...): ids V .. V + num_new_tokens - 1 are the caller's to
assign. Their input embedding is `token_embed[0] + new_token_embed[k]` (the frozen table is
looked up at row 0, a constant the trainable row absorbs, so the frozen table is never
resized or updated) and their logits come from the trainable "new_token_head". Ids below V may
also serve as `image_token_id`.

Training updates only the resampler, the gated blocks and the new-token parameters, e.g.

    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask(params))
    tx = optax.multi_transform({"train": optax.adamw(lr), "freeze": optax.set_to_zero()}, labels)

which leaves everything else bit-identical; a run gets the same with `optim.trainable=TRAINABLE`.
(`optax.masked(adamw, mask)` alone would not: it passes the raw gradients of the masked-out
leaves through as their updates.)
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from mmjax.nn import initializers
from mmjax.nn.gated_cross_attention import GatedCrossAttentionBlock
from mmjax.nn.text import embed_tokens
from mmjax.nn.transformer import DEFAULT_LAYER_NORM_EPSILON, TransformerBlock, dense, layer_norm

Dtype = Any
PyTree = Any

GATED_BLOCK_PREFIX = "gated_xattn_"
# What trains, as `optim.trainable` path patterns (the rest is the frozen LM and vision tower).
TRAINABLE = ("resampler", "new_token_embed", "new_token_head",
             f"transformer/{GATED_BLOCK_PREFIX}*")


class FlamingoCache(NamedTuple):
  """Decoding state for B rows (batch-first leaves, so beam search expands and reorders them).

  Attributes:
    media_latents: `[B, M, R, Wv]`, the resampled images (encoded once, in `init_cache`).
    kv: the Flax "cache" collection: each LM block's self-attention `SlotKVCache`
      (`max_length` slots per row) and each gated block's media K/V, a `ContextKVCache` (M R
      keys, one copy per group of rows reading the same images).
    media_seen: int32 `[B]`, `<image>` tokens already fed per row: the next text token's
      latest image is media_seen - 1 (or the next `<image>`).
  """
  media_latents: jax.Array
  kv: PyTree
  media_seen: jax.Array


class FlamingoTransformer(nn.Module):
  """The frozen LM's causal `TransformerBlock`s with `GatedCrossAttentionBlock`s in between,
  then "ln_final": `[B, L, D] -> [B, L, D]`."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  cross_attn_every: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  gelu_approximate: bool = True
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, media_latents: jax.Array, media_locations: jax.Array,
               positions: jax.Array | None = None,
               media_before: jax.Array | None = None) -> jax.Array:
    """`x` `[B, L, D]`, `media_latents` `[B, M, R, Dv]`, `media_locations` bool `[B, L]`;
    decoding: `positions` int `[B, L]` (KV-cache slots), `media_before` int `[B]`."""
    for i in range(self.num_layers):
      if (i + 1) % self.cross_attn_every == 0:
        x = GatedCrossAttentionBlock(
            self.num_heads, self.mlp_dim, self.dtype, self.param_dtype,
            self.attention_impl, self.gelu_approximate, self.layer_norm_epsilon, self.decode,
            name=f"{GATED_BLOCK_PREFIX}{i}")(x, media_latents, media_locations, media_before)
      x = TransformerBlock(self.num_heads, self.mlp_dim, False, self.dtype, self.param_dtype,
                           self.attention_impl, self.decode,
                           gelu_approximate=self.gelu_approximate,
                           layer_norm_epsilon=self.layer_norm_epsilon,
                           name=f"block_{i}")(x, causal=True, positions=positions)
    return layer_norm("ln_final", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)


class Flamingo(nn.Module):
  """Vision encoder -> Perceiver Resampler -> gated cross-attention into a frozen LM.

  Attributes:
    vision_encoder: images `[N, H, W, 3]` -> `(tokens [N, T, Wv], pooled)`, e.g. the registry's
      "vision_transformer" (all its tokens, class token included, are resampled).
    resampler: `[B, M, F, T, Wv] -> [B, M, R, Wv]`, e.g. "perceiver_resampler".
    vocab_size: V, the frozen LM's vocabulary.
    max_length: the LM's learned positions (longest token sequence).
    image_token_id: the id of `<image>`; its i-th occurrence in a row marks image i.
    width, num_layers, num_heads, mlp_ratio: the LM (the gated blocks use the same heads and
      MLP ratio).
    num_new_tokens: trainable token rows with ids V .. V + num_new_tokens - 1 (see module doc).
    cross_attn_every: one gated block per this many LM layers, in [1, num_layers].
  """
  vision_encoder: nn.Module
  resampler: nn.Module
  vocab_size: int
  max_length: int
  image_token_id: int
  width: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  num_new_tokens: int = 2
  cross_attn_every: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  gelu_approximate: bool = True
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON
  decode: bool = False

  def encode_media(self, images: jax.Array) -> jax.Array:
    """`[B, M, H, W, 3]` or with frames `[B, M, F, H, W, 3]` -> latents `[B, M, R, Wv]`."""
    if images.ndim == 5:
      images = images[:, :, None]
    if images.ndim != 6:
      raise ValueError(f"images must be [B, M, H, W, C] or [B, M, F, H, W, C], got shape "
                       f"{images.shape}")
    batch, num_media, num_frames = images.shape[:3]
    tokens, _ = self.vision_encoder(images.reshape((-1,) + images.shape[3:]))
    tokens = tokens.reshape((batch, num_media, num_frames) + tokens.shape[1:])
    return self.resampler(tokens)

  def __call__(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
    """Teacher-forced next-token logits of interleaved image-text sequences.

    Args:
      images: `[B, M, H, W, 3]` (or `[B, M, F, H, W, 3]`): M images per row, in the order of
        the row's `<image>` tokens.
      tokens: int `[B, L]`, L <= max_length, ids in [0, V + num_new_tokens).
    Returns:
      logits float32 `[B, L, V + num_new_tokens]`.
    """
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be int [B, L], got {tokens.dtype} shape {tokens.shape}")
    if tokens.shape[1] > self.max_length:
      raise ValueError(f"tokens have length {tokens.shape[1]}, more than max_length="
                       f"{self.max_length}")
    if not 1 <= self.cross_attn_every <= self.num_layers:
      raise ValueError(f"cross_attn_every must be in [1, num_layers={self.num_layers}], got "
                       f"{self.cross_attn_every}")
    if not 0 <= self.image_token_id < self.vocab_size + self.num_new_tokens:
      raise ValueError(f"image_token_id={self.image_token_id} is outside the vocabulary "
                       f"[0, {self.vocab_size + self.num_new_tokens})")
    media_latents = self.encode_media(images)
    if media_latents.shape[0] != tokens.shape[0]:
      raise ValueError(f"images and tokens must have the same batch size, got "
                       f"{media_latents.shape[0]} and {tokens.shape[0]}")
    return self.decode_tokens(tokens, media_latents)

  @nn.compact
  def decode_tokens(self, tokens: jax.Array, media_latents: jax.Array,
                    positions: jax.Array | None = None,
                    media_before: jax.Array | None = None) -> jax.Array:
    """Logits float32 `[B, L, V + num_new_tokens]` of `tokens` `[B, L]` given the resampled
    media `[B, M, R, Wv]`; decoding: `positions` int `[B, L]`, `media_before` int `[B]`
    (`<image>` tokens of each row already in the cache)."""
    x = self._embed(tokens, positions)
    x = FlamingoTransformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                            self.cross_attn_every, self.dtype, self.param_dtype,
                            self.attention_impl, self.gelu_approximate, self.layer_norm_epsilon,
                            self.decode, name="transformer")(
                                x, media_latents, tokens == self.image_token_id, positions,
                                media_before)
    logits = dense(self.vocab_size, "lm_head", ("embed", "vocab"), dtype=self.dtype,
                   param_dtype=self.param_dtype)(x)
    if self.num_new_tokens:
      new_logits = dense(self.num_new_tokens, "new_token_head", ("embed", None),
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)
      logits = jnp.concatenate([logits, new_logits], axis=-1)
    return logits.astype(jnp.float32)

  @nn.nowrap
  def init_cache(self, params: PyTree, images: jax.Array, max_length: int) -> FlamingoCache:
    """Encodes and resamples `images` `[B, M, H, W, 3]` once; an empty cache for `max_length`
    positions (<= the model's `max_length`), every gated block's media K/V projected once."""
    if not 0 < max_length <= self.max_length:
      raise ValueError(f"cache max_length must be in [1, {self.max_length}] (the LM's learned "
                       f"positions), got {max_length}")
    latents = self.apply({"params": params}, images, method=Flamingo.encode_media)
    batch = latents.shape[0]
    tokens = jnp.zeros((batch, max_length), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(max_length, dtype=jnp.int32), (batch, max_length))
    seen = jnp.zeros((batch,), jnp.int32)
    # A call on an empty "cache" collection allocates it (see decoding_cache.init_cache).
    _, variables = self.clone(decode=True).apply(
        {"params": params}, tokens, latents, positions, seen, method=Flamingo.decode_tokens,
        mutable=["cache"])
    return FlamingoCache(latents, variables["cache"], seen)

  @nn.nowrap
  def decode_step(self, params: PyTree, tokens: jax.Array, cache: FlamingoCache,
                  positions: jax.Array) -> tuple[jax.Array, FlamingoCache]:
    """The `mmjax.decoding` step function (bind `params` with `functools.partial`): tokens,
    positions int `[B, T]` -> (logits `[B, T, V + num_new_tokens]`, cache). An `<image>` among
    the tokens moves the row's text on to its next image."""
    if tokens.ndim != 2 or positions.shape != tokens.shape:
      raise ValueError(f"tokens and positions must both be int [B, T], got shapes "
                       f"{tokens.shape} and {positions.shape}")
    logits, variables = self.clone(decode=True).apply(
        {"params": params, "cache": cache.kv}, tokens, cache.media_latents, positions,
        cache.media_seen, method=Flamingo.decode_tokens, mutable=["cache"])
    seen = cache.media_seen + (tokens == self.image_token_id).sum(axis=1, dtype=jnp.int32)
    return logits, FlamingoCache(cache.media_latents, variables["cache"], seen)

  def _embed(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """`[B, L]` -> `[B, L, width]`: the frozen embeddings, plus the trainable new-token rows."""
    is_new = tokens >= self.vocab_size
    x = embed_tokens(self, jnp.where(is_new, 0, tokens), vocab_size=self.vocab_size,
                     width=self.width, max_length=self.max_length, positions=positions)
    if not self.num_new_tokens:
      return x
    new_rows = nn.Embed(self.num_new_tokens, self.width, dtype=self.dtype,
                        param_dtype=self.param_dtype,
                        embedding_init=nn.with_logical_partitioning(initializers.embedding,
                                                                    (None, "embed")),
                        name="new_token_embed")(
                            jnp.clip(tokens - self.vocab_size, 0, self.num_new_tokens - 1))
    return x + is_new[..., None].astype(x.dtype) * new_rows


def trainable_mask(params: PyTree) -> PyTree:
  """Bools shaped like `nn.unbox(params)`: True for the resampler, the gated cross-attention
  blocks and the new-token embedding/head (`TRAINABLE`); False for the LM and vision encoder.
  Labels for `optax.multi_transform` (see the module docstring); a run gets the same with
  `optim.trainable=TRAINABLE`."""
  from mmjax.train.optim import trainable_mask as path_mask  # the one path matcher
  # Without new tokens (num_new_tokens=0) their parameters do not exist.
  return path_mask(params, [p for p in TRAINABLE if p.split("/")[0] in params])


def load_lm_params(params: PyTree, lm_params: PyTree) -> PyTree:
  """`params` (a Flamingo's) with every leaf of `lm_params` put at the same path.

  `lm_params`: a trained `captioner.TextDecoder(cross_attention=False)`'s params (or a causal
  `TextTransformer`'s) of the same width, layers, heads and vocabulary. ValueError names a path
  that Flamingo lacks or whose shape differs.
  """
  flat = traverse_util.flatten_dict(params)
  for path, value in traverse_util.flatten_dict(lm_params).items():
    if path not in flat:
      raise ValueError(f"LM parameter {'/'.join(path)} has no place in the Flamingo params")
    target = flat[path]
    new = nn.unbox(value)
    if nn.unbox(target).shape != new.shape:
      raise ValueError(f"LM parameter {'/'.join(path)} has shape {new.shape}, Flamingo expects "
                       f"{nn.unbox(target).shape}")
    flat[path] = target.replace_boxed(new) if isinstance(target, nn.Partitioned) else new
  return traverse_util.unflatten_dict(flat)
