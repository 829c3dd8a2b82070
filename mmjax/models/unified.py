"""A GPT-4V / LLaVA-style unified decoder: image tokens spliced into one causal LM sequence.

    image_embeds = projector(vision_encoder(images)) + image_pos_embed      [B, M, K, D]
    x = splice(embed(text tokens), image_embeds)                             [B, S, D]
    h = Transformer(x, causal)          (one causal transformer over [text; image] tokens)
    logits = lm_head(h) at the text tokens                                   [B, L, V]

Where the images go:
  * `image_token_id=None` (the default): the M images of a row come first, then its text
    (LLaVA's `<image>\\n` prompt). `__call__(images, tokens)` and the decoding methods then
    take the same arguments as `Captioner`'s, so the caption, VQA and grounding tasks, their
    generative heads (`GenerativeAnswerer`, `CoordinateDecoder`) and `mmjax.decoding` drive it
    unchanged.
  * `image_token_id=ID`: interleaved sequences. The i-th placeholder `ID` of a row is replaced
    by image i's K embeddings (the LLaVA splice), so a row of L tokens with M placeholders
    becomes S = L + M (K - 1) positions; every row must hold exactly M placeholders.

Positions. Text tokens keep the positions a text-only LM gives them: the j-th text token of a
row (placeholders not counted) adds `pos_embed[j]`, so a trained decoder-only LM's parameters
load unchanged (`load_lm_params`). Image token k of any image adds `image_pos_embed[k]`. The
order of the spliced sequence is the causal order.

Logits come back aligned with the input tokens, exactly as the Captioner's: row t scores
P(token t+1 | tokens <= t, the images before it); a placeholder's row is read at its image's
last token. So `caption_loss` and the prompt-masked losses of the tasks apply as they are.

Parameter layout: "vision_encoder", "projector" ("fc1" .. "fc{depth}"; "fc" when linear),
"projector"/"pos_embed" (the image positions), and the LM where
`captioner.TextDecoder(cross_attention=False)` keeps it: "token_embed", "pos_embed",
"transformer", "lm_head". The two-stage recipe freezes by path: stage 1
`optim.trainable=("projector",)`, stage 2 `("projector", "token_embed", "pos_embed",
"transformer", "lm_head")`.

Decoding (images first only): `init_cache(params, images, max_length)` encodes the images and
writes their K/V into the cache once (slots 0 .. MK-1); every later step only feeds text, at
slot MK + its text position, so image tokens are never recomputed.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn import initializers
from mmjax.nn.positions import sincos_2d_positions
from mmjax.nn.text import embed_tokens
from mmjax.nn.transformer import DEFAULT_LAYER_NORM_EPSILON, Transformer, dense

Dtype = Any
PyTree = Any

# Stands for "an image goes here" in images-first rows; no tokenizer emits a negative id.
_PREFIX_PLACEHOLDER = -1
PROJECTORS = ("mlp", "linear")
IMAGE_POSITIONS = ("learned", "sincos")


class UnifiedCache(NamedTuple):
  """Decoding state for B rows (batch-first leaves, so beam search expands and reorders them).

  Attributes:
    kv: the transformer's Flax "cache" collection (a `SlotKVCache` of MK + max_length
      slots per row and layer), image K/V already in slots 0..MK-1.
    text_offset: int32 `[B]`, MK: the slot of text position 0.
  """
  kv: PyTree
  text_offset: jax.Array


def splice_layout(tokens: jax.Array, placeholder_id: int, tokens_per_image: int,
                  num_images: int) -> dict[str, jax.Array]:
  """Where each position of the spliced sequence comes from (one row; vmap for a batch).

  Args:
    tokens: int `[L]` holding `num_images` (M) placeholders `placeholder_id`.
    tokens_per_image: K.
  Returns (S = L + M (K - 1)):
    source: int `[S]`, the input token j that fills slot s;
    is_image: bool `[S]`; image: int `[S]`, which image (the placeholder's rank, -1 before
      the first); image_slot: int `[S]`, k in [0, K) within the image (0 for text);
    text_position: int `[S]`, j's rank among the row's text tokens;
    last_slot: int `[L]`, the slot whose output predicts token j + 1.
  """
  is_placeholder = tokens == placeholder_id
  width = jnp.where(is_placeholder, tokens_per_image, 1)
  end = jnp.cumsum(width)
  start = end - width
  slots = jnp.arange(tokens.shape[0] + (tokens_per_image - 1) * num_images)
  source = jnp.clip(jnp.searchsorted(end, slots, side="right"), 0, tokens.shape[0] - 1)
  image_rank = jnp.cumsum(is_placeholder) - 1
  text_rank = jnp.cumsum(~is_placeholder) - 1
  return {"source": source, "is_image": is_placeholder[source], "image": image_rank[source],
          "image_slot": slots - start[source], "text_position": text_rank[source],
          "last_slot": end - 1}


def check_placeholders(tokens: jax.Array, placeholder_id: int, num_images: int) -> None:
  """ValueError unless every row of concrete int `tokens` `[B, L]` holds `num_images`
  placeholders. Traced tokens cannot be counted: a task checks its host batches instead."""
  try:
    counts = (np.asarray(tokens) == placeholder_id).sum(axis=1)
  except jax.errors.TracerArrayConversionError:
    return
  if np.any(counts != num_images):
    bad = int(np.flatnonzero(counts != num_images)[0])
    raise ValueError(f"row {bad} has {int(counts[bad])} image placeholders (id {placeholder_id}) "
                     f"but {num_images} images were given; each row needs one placeholder per "
                     f"image")


class ImageProjector(nn.Module):
  """Vision tokens `[N, T, Wv]` -> LM embeddings `[N, T, D]` plus image positions.

  Attributes:
    kind: "mlp" (LLaVA-1.5: `depth` Dense layers, GELU between) or "linear" (LLaVA-1).
    max_tokens: learned positions ("pos_embed" `[max_tokens, D]`); T must not exceed it.
    position_embedding: "learned" ("pos_embed", normal(0.02) init) or "sincos": fixed 2-D
      sin-cos positions of the patch grid (`mmjax.nn.positions.sincos_2d_positions`; no parameter),
      for T = S^2 patch tokens or T = 1 + S^2 with a class token first (which gets none).
      They are of the order of the projected tokens from step 0, where learned ones start
      0.02-small (on ShapeWorld grounding they did not help: experiments/ofa_shapeworld).
  """
  width: int
  max_tokens: int
  kind: str = "mlp"
  depth: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gelu_approximate: bool = True
  position_embedding: str = "learned"

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    if self.position_embedding not in IMAGE_POSITIONS:
      raise ValueError(f"image position_embedding must be one of {IMAGE_POSITIONS}, got "
                       f"{self.position_embedding!r}")
    if self.kind not in PROJECTORS:
      raise ValueError(f"projector must be one of {PROJECTORS}, got {self.kind!r}")
    if self.kind == "mlp" and self.depth < 1:
      raise ValueError(f"projector_depth must be >= 1, got {self.depth}")
    if tokens.shape[1] > self.max_tokens:
      raise ValueError(f"the vision encoder gives {tokens.shape[1]} tokens per image, more than "
                       f"image_positions={self.max_tokens}")
    x = tokens.astype(self.dtype)
    names = ["fc"] if self.kind == "linear" else [f"fc{i + 1}" for i in range(self.depth)]
    for i, name in enumerate(names):
      if i:
        x = nn.gelu(x, approximate=self.gelu_approximate)
      x = dense(self.width, name, ("mlp", "embed"), dtype=self.dtype,
                param_dtype=self.param_dtype)(x)
    if self.position_embedding == "sincos":
      return x + jnp.asarray(grid_positions(x.shape[1], self.width), self.dtype)
    pos = self.param("pos_embed", nn.with_logical_partitioning(initializers.embedding,
                                                               (None, "embed")),
                     (self.max_tokens, self.width), self.param_dtype)
    return x + pos[:x.shape[1]].astype(self.dtype)


def grid_positions(num_tokens: int, width: int) -> np.ndarray:
  """Fixed 2-D sin-cos positions float32 `[T, width]` of T = S^2 row-major patch tokens, or of
  T = 1 + S^2 tokens whose first (a class token) has no place and gets zeros."""
  for leading in (0, 1):
    side = math.isqrt(num_tokens - leading)
    if side * side == num_tokens - leading and side:
      grid = sincos_2d_positions(side, side, width)
      return np.concatenate([np.zeros((leading, width), np.float32), grid])
  raise ValueError(f"sin-cos image positions need S^2 patch tokens (or 1 + S^2 with a class "
                   f"token), got {num_tokens} tokens")


class UnifiedDecoder(nn.Module):
  """Vision encoder -> projector -> image tokens in the sequence of one causal LM.

  Attributes:
    vision_encoder: images `[N, H, W, 3]` -> `(tokens [N, T, Wv], pooled)`, e.g. the registry's
      "vision_transformer" (warm-startable from a CLIP image tower).
    vocab_size: V; max_length: the LM's learned text positions (longest text, prompt included).
    image_positions: learned image-token positions: K, the tokens of one image after
      `drop_class_token`, must not exceed it.
    image_token_id: None (images first) or the placeholder id of interleaved rows (module doc).
    drop_class_token: feed the encoder's patch tokens only (LLaVA), not its first token.
    projector, projector_depth: see `ImageProjector` ("mlp" / "linear").
    image_position_embedding: "learned" ("projector"/"pos_embed") or "sincos" (fixed 2-D
      positions of the patch grid, no parameter; see `ImageProjector`).
    width, num_layers, num_heads, mlp_ratio: the LM.
    decode: the KV-cached LM; set by `init_cache`/`decode_step`, not by users.
  """
  vision_encoder: nn.Module
  vocab_size: int
  max_length: int
  image_positions: int = 64
  image_token_id: int | None = None
  drop_class_token: bool = False
  projector: str = "mlp"
  projector_depth: int = 2
  image_position_embedding: str = "learned"
  width: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON
  decode: bool = False

  @nn.compact
  def __call__(self, images: jax.Array | None, tokens: jax.Array | None, *,
               positions: jax.Array | None = None, text_offset: jax.Array | None = None,
               cache_length: int = 0) -> Any:
    """Teacher-forced next-token logits float32 `[B, L, V]` of `tokens`, aligned with them.

    Args:
      images: `[B, H, W, 3]` or `[B, M, H, W, 3]`, in placeholder order.
      tokens: int `[B, L]`: the text (images first), or with one `image_token_id` per image.
    The keyword arguments are the decoding paths of `init_cache` (images only, `cache_length`
    slots) and `decode_step` (tokens only, at text `positions`, slots `text_offset +
    positions`); users call those methods instead.
    """
    lm = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                     dtype=self.dtype, param_dtype=self.param_dtype,
                     attention_impl=self.attention_impl, decode=self.decode,
                     remat=self.remat and not self.decode,
                     gelu_approximate=self.gelu_approximate,
                     layer_norm_epsilon=self.layer_norm_epsilon, name="transformer")
    if tokens is None:
      return self._prefill(lm, images, cache_length)
    lm_head = dense(self.vocab_size, "lm_head", ("embed", "vocab"), dtype=self.dtype,
                    param_dtype=self.param_dtype)
    if images is None:
      x = self._embed_text(tokens, positions)
      return lm_head(lm(x, causal=True, positions=positions + text_offset[:, None])
                     ).astype(jnp.float32)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be int [B, L], got {tokens.dtype} shape {tokens.shape}")
    batch, num_images = tokens.shape[0], images.shape[1] if images.ndim == 5 else 1
    if images.shape[0] != batch:
      raise ValueError(f"images and tokens must have the same batch size, got "
                       f"{images.shape[0]} and {batch}")
    if self.image_token_id is not None:
      check_placeholders(tokens, self.image_token_id, num_images)
    image_embeds = self._encode_images(images)
    if self.image_token_id is None:
      text_length = tokens.shape[1]
      prefix = jnp.full((batch, num_images), _PREFIX_PLACEHOLDER, tokens.dtype)
      tokens = jnp.concatenate([prefix, tokens], axis=1)
    else:
      if not 0 <= self.image_token_id < self.vocab_size:
        raise ValueError(f"image_token_id={self.image_token_id} is outside the vocabulary "
                         f"[0, {self.vocab_size})")
      text_length = tokens.shape[1] - num_images
    if text_length > self.max_length:
      raise ValueError(f"tokens have {text_length} text positions, more than max_length="
                       f"{self.max_length}")
    x, last_slot = self.splice(tokens, image_embeds)
    logits = lm_head(lm(x, causal=True)).astype(jnp.float32)
    logits = jnp.take_along_axis(logits, last_slot[..., None], axis=1)
    return logits[:, num_images:] if self.image_token_id is None else logits

  def _encode_images(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` (one image a row) or `[B, M, H, W, 3]` -> image embeds `[B, M, K, D]`."""
    if images.ndim == 4:
      images = images[:, None]
    if images.ndim != 5:
      raise ValueError(f"images must be [B, H, W, C] or [B, M, H, W, C], got shape "
                       f"{images.shape}")
    batch, num_images = images.shape[:2]
    tokens, _ = self.vision_encoder(images.reshape((-1,) + images.shape[2:]))
    if self.drop_class_token:
      tokens = tokens[:, 1:]
    x = ImageProjector(self.width, self.image_positions, self.projector, self.projector_depth,
                       self.dtype, self.param_dtype, self.gelu_approximate,
                       self.image_position_embedding, name="projector")(tokens)
    return x.reshape((batch, num_images) + x.shape[1:])

  def _embed_text(self, tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
    return embed_tokens(self, tokens, vocab_size=self.vocab_size, width=self.width,
                        max_length=self.max_length, positions=positions)

  def splice(self, tokens: jax.Array, image_embeds: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """The LM input: `tokens` int `[B, L]` with M placeholders a row, `image_embeds`
    `[B, M, K, D]` -> (`[B, S, D]` spliced embeddings, int `[B, L]` last slot of each token)."""
    placeholder = (_PREFIX_PLACEHOLDER if self.image_token_id is None
                   else int(self.image_token_id))
    num_images, per_image = image_embeds.shape[1:3]
    layout = jax.vmap(lambda row: splice_layout(row, placeholder, per_image, num_images))(tokens)
    text_tokens = jnp.take_along_axis(jnp.where(tokens == placeholder, 0, tokens),
                                      layout["source"], axis=1)
    text_embeds = self._embed_text(text_tokens,
                                   jnp.clip(layout["text_position"], 0, self.max_length - 1))
    rows = jnp.arange(tokens.shape[0])[:, None]
    picked = image_embeds.astype(text_embeds.dtype)[
        rows, jnp.clip(layout["image"], 0, num_images - 1), layout["image_slot"]]
    return (jnp.where(layout["is_image"][..., None], picked, text_embeds),
            layout["last_slot"])

  def _prefill(self, lm: nn.Module, images: jax.Array, cache_length: int) -> int:
    """Writes the images' K/V into the decode-mode LM's cache (allocating `cache_length` slots
    on the first call); returns MK, the image slots."""
    image_embeds = self._encode_images(images)
    batch, num_images, per_image = image_embeds.shape[:3]
    num_slots = num_images * per_image
    if not self.has_variable("cache", "transformer"):
      # The first decode-mode call sizes the caches by its length and writes nothing.
      lm(jnp.zeros((batch, num_slots + cache_length, self.width), self.dtype), causal=True,
         positions=_slots(batch, num_slots + cache_length))
    lm(image_embeds.reshape(batch, num_slots, -1), causal=True,
       positions=_slots(batch, num_slots))
    return num_slots

  # -- KV-cached decoding (images first) ------------------------------------------------------

  @nn.nowrap
  def init_cache(self, params: PyTree, images: jax.Array, max_length: int) -> UnifiedCache:
    """Encodes `images` (`[B, H, W, 3]` or `[B, M, H, W, 3]`) into the KV cache once; room for
    `max_length` text positions (prompt + new tokens, at most the model's `max_length`)."""
    if self.image_token_id is not None:
      raise ValueError("init_cache decodes images-first rows; this model has image_token_id="
                       f"{self.image_token_id} (interleaved): build it with image_token_id=None "
                       "to decode")
    if not 0 < max_length <= self.max_length:
      raise ValueError(f"cache max_length must be in [1, {self.max_length}] (the model's "
                       f"learned text positions), got {max_length}")
    num_slots, variables = self.clone(decode=True).apply(
        {"params": params}, images, None, cache_length=max_length, mutable=["cache"])
    return UnifiedCache(variables["cache"], jnp.full((images.shape[0],), num_slots, jnp.int32))

  @nn.nowrap
  def decode_step(self, params: PyTree, tokens: jax.Array, cache: UnifiedCache,
                  positions: jax.Array) -> tuple[jax.Array, UnifiedCache]:
    """The `mmjax.decoding` step function (bind `params` with `functools.partial`).

    Args:
      tokens: int `[B, T]` text; positions: int `[B, T]` their text positions.
    Returns:
      logits `[B, T, V]` float32 and the updated cache.
    """
    if tokens.ndim != 2 or positions.shape != tokens.shape:
      raise ValueError(f"tokens and positions must both be int [B, T], got shapes "
                       f"{tokens.shape} and {positions.shape}")
    logits, variables = self.clone(decode=True).apply(
        {"params": params, "cache": cache.kv}, None, tokens, positions=positions,
        text_offset=cache.text_offset, mutable=["cache"])
    return logits, UnifiedCache(variables["cache"], cache.text_offset)


def _slots(batch: int, length: int) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
