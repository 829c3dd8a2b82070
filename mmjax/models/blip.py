"""BLIP (Li et al. 2022): one ViT and one text transformer run in three modes.

Text modes (`BLIP.text_features(mode=...)`), all sharing token/position embeddings, the
cross-attention, the MLPs and the final LayerNorm of every block:

  "text"      unimodal encoder: bidirectional self-attention, no image (ITC text features,
              from the first/[CLS] token).
  "grounded"  image-grounded encoder: bidirectional self-attention + cross-attention to the
              image tokens (ITM head on the first token).
  "decoder"   image-grounded decoder: a SEPARATE causal self-attention + the same
              cross-attention and MLP (LM head). This is BLIP's "shares all parameters with the
              encoder except the self-attention layers".

The text transformer is mmjax's `TextTransformer`: each `TransformerBlock` holds the
bidirectional "self_attn" and, as its `decoder_attention`, the "causal_self_attn", each with its
own LayerNorm (BERT's self-attention output LayerNorm is likewise not shared in BLIP), and one
copy of everything else.

Decoding uses the `mmjax.decoding` step-function interface, implemented once for BLIP and the
`Captioner` in `mmjax.models.decoding_cache`:

    cache = model.init_cache(params, images, max_length=P + N)
    step_fn = functools.partial(model.decode_step, params)
    out = decoding.greedy(step_fn, cache, prompt, max_new_tokens=N, eos_id=EOS)
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import decoding_cache
from mmjax.models.clip import l2_normalize
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import dense
from mmjax.nn.vit import VisionTransformer

Dtype = Any
PyTree = Any

TEXT_MODES = ("text", "grounded", "decoder")
# The name of the LM decoder's causal self-attention in every text block.
DECODER_ATTENTION = "causal_self_attn"


def _check_mode(mode: str, tokens: jax.Array, image_tokens: jax.Array | None,
                max_length: int) -> None:
  if mode not in TEXT_MODES:
    raise ValueError(f"mode must be one of {TEXT_MODES}, got {mode!r}")
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be int [B, T], got shape {tokens.shape} dtype {tokens.dtype}")
  if tokens.shape[1] > max_length:
    raise ValueError(f"tokens have length {tokens.shape[1]}, more than the text transformer's "
                     f"max_length={max_length}")
  if (mode == "text") != (image_tokens is None):
    raise ValueError(f"mode {mode!r} {'takes no' if mode == 'text' else 'needs'} image_tokens")
  if image_tokens is not None and (image_tokens.ndim != 3
                                   or image_tokens.shape[0] != tokens.shape[0]):
    raise ValueError(f"image_tokens must be [B={tokens.shape[0]}, S, D], got shape "
                     f"{image_tokens.shape}")


class BLIP(nn.Module):
  """ViT + `TextTransformer` (three modes) + ITC projections and temperature, ITM head, LM head.

  Attributes:
    vocab_size: V (pad 0, bos 1, eos 2 with mmjax's word tokenizer).
    max_length: the text transformer's learned positions (longest text, prompt included).
    embed_dim: ITC embedding width E.
    patch_size, vision_width, vision_layers, vision_heads, vision_pool, stem_channels: the ViT
      (`vision_pool` gives the ITC image feature; all tokens feed the cross-attention).
    text_width, text_layers, text_heads: the text transformer.
    logit_scale_init: initial log inverse ITC temperature (clipped at log 100, as CLIP).
    decode: build the KV-cached decoder; set by `init_cache`/`decode_step`, not by users.
  """
  vocab_size: int
  max_length: int
  embed_dim: int = 128
  patch_size: int = 8
  vision_width: int = 128
  vision_layers: int = 2
  vision_heads: int = 4
  vision_pool: str = "cls"
  stem_channels: tuple[int, ...] = ()
  text_width: int = 128
  text_layers: int = 2
  text_heads: int = 4
  mlp_ratio: float = 4.0
  pad_id: int = 0
  logit_scale_init: float = math.log(1 / 0.07)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  remat: bool = False
  gelu_approximate: bool = True
  decode: bool = False

  def setup(self):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype,
                  attention_impl=self.attention_impl, remat=self.remat,
                  gelu_approximate=self.gelu_approximate)
    self.image_encoder = VisionTransformer(
        self.patch_size, self.vision_width, self.vision_layers, self.vision_heads,
        self.mlp_ratio, pool=self.vision_pool, stem_channels=tuple(self.stem_channels), **common)
    self.text = TextTransformer(
        self.vocab_size, self.max_length, self.text_width, self.text_layers, self.text_heads,
        self.mlp_ratio, causal=False, pool="first", pad_id=self.pad_id, cross_attention=True,
        decoder_attention=DECODER_ATTENTION, context_optional=True, decode=self.decode,
        **common)
    head = lambda features, name, axes: dense(features, name, axes, dtype=self.dtype,
                                              param_dtype=self.param_dtype)
    self.image_proj = dense(self.embed_dim, "image_proj", ("embed", "embed_out"),
                            dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    self.text_proj = dense(self.embed_dim, "text_proj", ("embed", "embed_out"),
                           dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    self.itm_head = head(2, "itm_head", ("embed", None))
    self.lm_head = head(self.vocab_size, "lm_head", ("embed", "vocab"))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init),
                                  ())

  # -- image ----------------------------------------------------------------------------------

  def image_features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[B, H, W, 3]` -> image tokens `[B, 1 + N, vision_width]` and normalised ITC
    embedding float32 `[B, E]`."""
    if images.ndim != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    tokens, pooled = self.image_encoder(images)
    return tokens, l2_normalize(self.image_proj(pooled))

  def encode_image(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` -> normalised ITC embedding float32 `[B, E]` (as `CLIP.encode_image`)."""
    return self.image_features(images)[1]

  def encode_image_tokens(self, images: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` -> image tokens `[B, 1 + N, vision_width]` (cross-attention context)."""
    return self.image_features(images)[0]

  # -- text -----------------------------------------------------------------------------------

  def text_features(self, tokens: jax.Array, image_tokens: jax.Array | None = None, *,
                    mode: str, positions: jax.Array | None = None) -> jax.Array:
    """Features `[B, T, text_width]` of `tokens` int `[B, T]` in one of `TEXT_MODES`.

    Args:
      image_tokens: `[B, S, Dv]`; required by "grounded" and "decoder", refused by "text".
      positions: int `[B, T]` absolute positions / cache slots ("decoder" when decoding).
    """
    _check_mode(mode, tokens, image_tokens, self.max_length)
    if positions is not None and mode != "decoder":
      raise ValueError(f"positions are only used by the 'decoder' mode, not {mode!r}")
    features, _ = self.text(tokens, image_tokens, decoder=mode == "decoder",
                            positions=positions)
    return features

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """Unimodal encoder: `[B, L]` -> normalised ITC embedding float32 `[B, E]` of token 0."""
    features = self.text_features(tokens, mode="text")
    return l2_normalize(self.text_proj(features[:, 0]))

  def itm_logits(self, image_tokens: jax.Array, tokens: jax.Array) -> jax.Array:
    """Image-grounded encoder: logits float32 `[B, 2]` (no-match, match) of the pairs
    (`image_tokens[b]` `[S, Dv]`, `tokens[b]` `[L]`), read at token 0."""
    features = self.text_features(tokens, image_tokens, mode="grounded")
    return self.itm_head(features[:, 0]).astype(jnp.float32)

  def lm_logits(self, tokens: jax.Array, image_tokens: jax.Array,
                positions: jax.Array | None = None) -> jax.Array:
    """Image-grounded decoder: next-token logits float32 `[B, T, V]` of `tokens` `[B, T]`
    (row t scores token t + 1); `positions` int `[B, T]` are cache slots when decoding."""
    features = self.text_features(tokens, image_tokens, mode="decoder", positions=positions)
    return self.lm_head(features).astype(jnp.float32)

  def logit_params(self) -> dict[str, jax.Array]:
    """logit_scale `[]`: log inverse ITC temperature, clipped at log(100) as in CLIP."""
    return {"logit_scale": jnp.minimum(self.logit_scale, math.log(100.0))}

  def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
    """Every output on matching pairs (initialises every parameter).

    Args:
      images: `[B, H, W, 3]` float; tokens: int `[B, L]` (BOS + caption + EOS + padding).
    Returns:
      image_emb, text_emb float32 `[B, E]`; logit_scale `[]`; image_tokens `[B, S, Wv]`;
      itm_logits float32 `[B, 2]` of the pairs (image b, text b); lm_logits float32 `[B, L, V]`.
    """
    image_tokens, image_emb = self.image_features(images)
    if image_tokens.shape[0] != tokens.shape[0]:
      raise ValueError(f"images and tokens must have the same batch size, got "
                       f"{image_tokens.shape[0]} and {tokens.shape[0]}")
    return {"image_emb": image_emb, "text_emb": self.encode_text(tokens),
            **self.logit_params(), "image_tokens": image_tokens,
            "itm_logits": self.itm_logits(image_tokens, tokens),
            "lm_logits": self.lm_logits(tokens, image_tokens)}

  # -- decoding -------------------------------------------------------------------------------

  @nn.nowrap
  def init_cache(self, params: PyTree, images: jax.Array,
                 max_length: int) -> decoding_cache.DecodingCache:
    """Encodes `images` `[B, H, W, 3]` once; an empty cache for `max_length` positions
    (prompt + new tokens, at most the model's `max_length`)."""
    return decoding_cache.init_cache(self, params, images, max_length,
                                     encode=BLIP.encode_image_tokens, decode=BLIP.lm_logits)

  @nn.nowrap
  def decode_step(self, params: PyTree, tokens: jax.Array, cache: decoding_cache.DecodingCache,
                  positions: jax.Array) -> tuple[jax.Array, decoding_cache.DecodingCache]:
    """The `mmjax.decoding` step function (bind `params` with `functools.partial`).

    Args:
      tokens: int `[B, T]`; positions: int `[B, T]` their absolute positions (cache slots).
      cache: a `DecodingCache` for B rows.
    Returns:
      logits float32 `[B, T, V]` and the updated cache.
    """
    return decoding_cache.decode_step(self, params, tokens, cache, positions,
                                      decode=BLIP.lm_logits)
