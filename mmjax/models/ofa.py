"""OFA (Wang et al. 2022): one encoder-decoder for every task, instructed by text.

    image_embeds = image_proj(vision_encoder(images)) + image_pos_embed           [B, T, D]
    source = [image_embeds; embed(instruction)] + type_embed                       [B, T + Ls, D]
    memory = Transformer(source)            (bidirectional, instruction padding masked out)
    logits = TextDecoder(target tokens, cross-attending to memory)                 [B, L, V]

Every task is "instruction in, target tokens out" over one vocabulary: words, then the
location bins (ids V_words .. V - 1, as `mmjax.models.grounding`'s coordinate tokens), so one
set of weights captions ("what does the image describe ?" -> a caption), answers (the question
-> the answer's words) and grounds ('which region does the text " the red circle " describe ?'
-> 4 bin tokens). The decoder's prompt is BOS alone; the instruction is the encoder's.

Decoding has the Captioner's interface with the instruction as one more encoder input:

    cache = model.init_cache(params, images, max_length, instruction=instruction)
    step_fn = functools.partial(model.decode_step, params)
    decoding.greedy(step_fn, cache, bos_prompt, ...)     # or beam / constrained / coordinates

so `GenerativeAnswerer.decode(..., instruction=...)` (answers constrained to the answer list)
and `CoordinateDecoder.decode_boxes(..., instruction=...)` (bins only) drive it unchanged. The
cache holds the memory, its padding mask and the decoder's self- and cross-attention K/V: the
encoder runs once per row.

Parameter layout: "vision_encoder"; "encoder" ("image_proj" (fc + pos_embed),
"token_embed", "pos_embed", "type_embed", "transformer"); "decoder" (a
`captioner.TextDecoder`: "token_embed", "pos_embed", "transformer", "lm_head").
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import decoding_cache
from mmjax.models.captioner import TextDecoder
from mmjax.models.unified import ImageProjector
from mmjax.nn import initializers
from mmjax.nn.attention import make_padding_mask
from mmjax.nn.text import embed_tokens
from mmjax.nn.transformer import Transformer

Dtype = Any
PyTree = Any

OFACache = decoding_cache.DecodingCache


class OFAEncoder(nn.Module):
  """[image tokens; instruction tokens] -> memory `[B, T + Ls, D]` and its mask `[B, T + Ls]`.

  Attributes:
    vocab_size, source_length: the instruction's vocabulary and longest length (Ls).
    image_positions: learned image positions (at least the vision encoder's T tokens).
    image_position_embedding: "learned" or "sincos" (fixed 2-D, see `ImageProjector`).
  """
  vocab_size: int
  source_length: int
  image_positions: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  pad_id: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  image_position_embedding: str = "learned"

  @nn.compact
  def __call__(self, vision_tokens: jax.Array,
               instruction: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`vision_tokens` `[B, T, Wv]`, `instruction` int `[B, Ls]` (pad = `pad_id`)."""
    image = ImageProjector(self.width, self.image_positions, "linear", dtype=self.dtype,
                           param_dtype=self.param_dtype,
                           position_embedding=self.image_position_embedding,
                           name="image_proj")(vision_tokens)
    text = embed_tokens(self, instruction, vocab_size=self.vocab_size, width=self.width,
                        max_length=self.source_length)
    type_embed = self.param("type_embed", nn.with_logical_partitioning(
        initializers.embedding, (None, "embed")), (2, self.width), self.param_dtype)
    x = jnp.concatenate([image + type_embed[0].astype(self.dtype),
                         text + type_embed[1].astype(self.dtype)], axis=1)
    valid = jnp.concatenate([jnp.ones(image.shape[:2], bool), instruction != self.pad_id], 1)
    x = Transformer(self.num_layers, self.num_heads, int(self.width * self.mlp_ratio),
                    dtype=self.dtype, param_dtype=self.param_dtype,
                    attention_impl=self.attention_impl, remat=self.remat,
                    gelu_approximate=self.gelu_approximate,
                    name="transformer")(x, mask=make_padding_mask(valid, valid))
    return x, valid


class OFA(nn.Module):
  """Vision encoder + `OFAEncoder` over [image; instruction] + cross-attending `TextDecoder`.

  Attributes:
    vision_encoder: images `[B, H, W, 3]` -> `(tokens [B, T, Wv], pooled)`, e.g. the registry's
      "vision_transformer".
    vocab_size: V, words + location bins (bins last); shared by instruction and target.
    max_length: the decoder's learned positions (BOS + target + EOS).
    source_length: the encoder's learned instruction positions.
    image_positions: learned image positions, >= the vision encoder's tokens per image.
    image_position_embedding: "learned" ("image_proj"/"pos_embed") or "sincos" (fixed 2-D
      positions of the patch grid, no parameter; see `ImageProjector`).
    width, encoder_layers, decoder_layers, num_heads, mlp_ratio: the transformer.
    pad_id: padding id of the instruction (masked out of attention).
    decode: build the KV-cached decoder; set by `init_cache`/`decode_step`, not by users.
  """
  vision_encoder: nn.Module
  vocab_size: int
  max_length: int
  source_length: int
  image_positions: int = 128
  width: int = 128
  encoder_layers: int = 2
  decoder_layers: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  pad_id: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  image_position_embedding: str = "learned"
  decode: bool = False

  def setup(self):
    self.encoder = OFAEncoder(
        self.vocab_size, self.source_length, self.image_positions, self.width,
        self.encoder_layers, self.num_heads, self.mlp_ratio, self.pad_id, self.dtype,
        self.param_dtype, self.attention_impl, self.remat, self.gelu_approximate,
        self.image_position_embedding)
    self.decoder = TextDecoder(
        self.vocab_size, self.max_length, self.width, self.decoder_layers, self.num_heads,
        self.mlp_ratio, cross_attention=True, dtype=self.dtype, param_dtype=self.param_dtype,
        attention_impl=self.attention_impl, decode=self.decode, remat=self.remat,
        gelu_approximate=self.gelu_approximate)

  def encode(self, images: jax.Array, instruction: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Memory `[R, T + Ls, D]` and its mask bool `[R, T + Ls]` (False at instruction padding)
    of images `[N, H, W, 3]` and instruction tokens int `[R, Ls]`, R = N K: rows i K ..
    i K + K - 1 are image i's K instructions (each image goes through the vision encoder
    once)."""
    _check_inputs(images, instruction, self.source_length)
    vision_tokens, _ = self.vision_encoder(images)
    rows_per_image = instruction.shape[0] // images.shape[0]
    if rows_per_image > 1:
      vision_tokens = jnp.repeat(vision_tokens, rows_per_image, axis=0)
    return self.encoder(vision_tokens, instruction)

  def decode_tokens(self, tokens: jax.Array, memory: jax.Array,
                    positions: jax.Array | None = None,
                    memory_mask: jax.Array | None = None) -> jax.Array:
    """Logits `[B, T, V]` of target `tokens` `[B, T]` given the encoder's memory."""
    return self.decoder(tokens, memory, positions, memory_mask)

  def __call__(self, images: jax.Array, instruction: jax.Array,
               tokens: jax.Array) -> jax.Array:
    """Teacher forcing: logits `[B, L, V]`, row t scoring P(w_{t+1} | w_<=t, image,
    instruction).

    Args:
      images: `[N, H, W, 3]` float.
      instruction: int `[R, Ls]`, Ls <= source_length, R = N K (K instructions per image, rows
        of an image adjacent; see `encode`).
      tokens: int `[R, L]`, L <= max_length: BOS + target + EOS + padding.
    """
    if tokens.ndim != 2 or tokens.shape[1] > self.max_length:
      raise ValueError(f"tokens must be int [R, L] with L <= max_length={self.max_length}, got "
                       f"shape {tokens.shape}")
    if tokens.shape[0] != instruction.shape[0]:
      raise ValueError(f"instruction and tokens must have the same rows, got "
                       f"{instruction.shape[0]} and {tokens.shape[0]}")
    memory, mask = self.encode(images, instruction)
    return self.decode_tokens(tokens, memory, memory_mask=mask)

  @nn.nowrap
  def init_cache(self, params: PyTree, images: jax.Array, max_length: int, *,
                 instruction: jax.Array) -> OFACache:
    """Encodes images `[N, H, W, 3]` with their instructions `[R, Ls]` (R = N K, see
    `encode`) once; an empty decoder cache of R rows for `max_length` target positions
    (<= the model's `max_length`)."""
    return decoding_cache.init_cache(self, params, images, max_length, encode=OFA.encode,
                                     decode=OFA.decode_tokens, encoder_inputs=(instruction,))

  @nn.nowrap
  def decode_step(self, params: PyTree, tokens: jax.Array, cache: OFACache,
                  positions: jax.Array) -> tuple[jax.Array, OFACache]:
    """The `mmjax.decoding` step function (bind `params` with `functools.partial`):
    tokens, positions int `[B, T]` -> (logits `[B, T, V]` float32, cache)."""
    return decoding_cache.decode_step(self, params, tokens, cache, positions,
                                      decode=OFA.decode_tokens)


def _check_inputs(images: jax.Array, instruction: jax.Array, source_length: int) -> None:
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  if instruction.ndim != 2 or not jnp.issubdtype(instruction.dtype, jnp.integer):
    raise ValueError(f"instruction must be int [B, Ls], got {instruction.dtype} "
                     f"{instruction.shape}")
  if instruction.shape[1] > source_length:
    raise ValueError(f"instruction has {instruction.shape[1]} tokens, more than the encoder's "
                     f"source_length={source_length}")
  if images.shape[0] == 0 or instruction.shape[0] % images.shape[0]:
    raise ValueError(f"instruction rows must be a multiple of the images (K instructions per "
                     f"image), got {instruction.shape[0]} rows for {images.shape[0]} images")
