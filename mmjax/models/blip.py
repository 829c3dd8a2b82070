"""BLIP (Li et al. 2022): one ViT and one text transformer run in three modes.

Text modes (`BLIPTextTransformer(mode=...)`), all sharing token/position embeddings, the
cross-attention, the MLPs and the final LayerNorm of every block:

  "text"      unimodal encoder: bidirectional self-attention, no image (ITC text features,
              from the first/[CLS] token).
  "grounded"  image-grounded encoder: bidirectional self-attention + cross-attention to the
              image tokens (ITM head on the first token).
  "decoder"   image-grounded decoder: a SEPARATE causal self-attention + the same
              cross-attention and MLP (LM head). This is BLIP's "shares all parameters with the
              encoder except the self-attention layers".

So each text block holds two self-attentions ("self_attn" bidirectional, "causal_self_attn")
and one copy of everything else. Pre-LayerNorm blocks: each self-attention has its own
LayerNorm (BERT's self-attention output LayerNorm is likewise not shared in BLIP).

Decoding uses the `mmjax.decoding` step-function interface, exactly like `Captioner`:

    cache = model.init_cache(params, images, max_length=P + N)
    step_fn = functools.partial(model.decode_step, params)
    out = decoding.greedy(step_fn, cache, prompt, max_new_tokens=N, eos_id=EOS)
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.clip import l2_normalize
from mmjax.nn.attention import MultiHeadAttention, make_padding_mask
from mmjax.nn.text import embed_tokens
from mmjax.nn.transformer import MlpBlock, dense, layer_norm
from mmjax.nn.vit import VisionTransformer

Dtype = Any
PyTree = Any

TEXT_MODES = ("text", "grounded", "decoder")


class BLIPCache(NamedTuple):
  """Decoding state for B rows (every leaf batch-first, so beam search can reorder rows).

  Attributes:
    image_tokens: `[B, S, vision_width]` the decoder cross-attends to.
    kv: the Flax "cache" collection: per layer the causal self-attention's `cached_key` /
      `cached_value` `[B, max_length, heads, head_dim]` and the cross-attention's
      `cached_cross_key` / `cached_cross_value` `[B, S, heads, head_dim]`.
  """
  image_tokens: jax.Array
  kv: PyTree


class BLIPTextBlock(nn.Module):
  """x + SelfAttn_mode(LN(x)) [+ CrossAttn(LN(x), image)] + MLP(LN(x)).

  `mode` picks the self-attention: bidirectional "self_attn" ("text", "grounded") or causal
  "causal_self_attn" ("decoder"); the cross-attention and MLP are the same parameters in every
  mode. `decode` KV-caches the causal self-attention and, in decoder mode, the cross-attention
  K/V of the image tokens (projected once, by `BLIP.init_cache`).
  """
  num_heads: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, image_tokens: jax.Array | None, mask: jax.Array | None,
               mode: str, positions: jax.Array | None) -> jax.Array:
    """`x` `[B, T, D]`, `image_tokens` `[B, S, Dv]` or None (every image token is attended);
    `mask` broadcasts to `[B, H, T, T]`; `positions` int `[B, T]` (KV-cache slots, decoder
    mode only)."""
    attention = lambda name, decode: MultiHeadAttention(
        self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        implementation=self.attention_impl, decode=decode, name=name)
    norm = lambda name: layer_norm(name, self.dtype, self.param_dtype)
    causal = mode == "decoder"
    self_attn = "causal_self_attn" if causal else "self_attn"
    h = norm(f"ln_{self_attn}")(x)
    x = x + attention(self_attn, self.decode and causal)(
        h, mask=mask, causal=causal, positions=positions if causal else None)
    if image_tokens is not None:
      x = x + attention("cross_attn", self.decode and causal)(norm("ln_cross")(x), image_tokens)
    h = norm("ln_mlp")(x)
    return x + MlpBlock(self.mlp_dim, self.dtype, self.param_dtype,
                        gelu_approximate=self.gelu_approximate, name="mlp")(h)


class BLIPTextTransformer(nn.Module):
  """Embeddings -> `BLIPTextBlock`s -> final LayerNorm, in one of `TEXT_MODES`.

  Attributes:
    max_length: learned positions (longest text, prompt included).
    decode: KV-cached causal self-attention for `mode="decoder"` at per-row `positions`.
  """
  vocab_size: int
  max_length: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  pad_id: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  remat: bool = False
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, tokens: jax.Array, image_tokens: jax.Array | None = None, *, mode: str,
               positions: jax.Array | None = None) -> jax.Array:
    """Features `[B, T, width]` of `tokens` int `[B, T]`.

    Args:
      image_tokens: `[B, S, Dv]`; required by "grounded" and "decoder", refused by "text".
      mode: one of `TEXT_MODES`.
      positions: int `[B, T]` absolute positions / cache slots ("decoder" with decode=True).
    """
    _check_mode(mode, tokens, image_tokens, self.max_length)
    if self.decode and mode == "decoder" and positions is None:
      raise ValueError("a decode=True BLIP decoder needs positions int [B, T]")
    x = embed_tokens(self, tokens, vocab_size=self.vocab_size, width=self.width,
                     max_length=self.max_length, positions=positions)
    mask = None
    if mode != "decoder":  # The causal decoder never looks at the padding after EOS.
      valid = tokens != self.pad_id
      mask = make_padding_mask(valid, valid)
    # Static mode: argument 4 counting `self`, as nn.remat numbers them.
    block_cls = nn.remat(BLIPTextBlock, static_argnums=(4,)) if (
        self.remat and not self.decode) else BLIPTextBlock
    for i in range(self.num_layers):
      block = block_cls(self.num_heads, int(self.width * self.mlp_ratio), self.dtype,
                        self.param_dtype, self.attention_impl, self.decode,
                        self.gelu_approximate, name=f"block_{i}")
      x = block(x, image_tokens, mask, mode, positions)
    return layer_norm("ln_final", self.dtype, self.param_dtype)(x)


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
  """ViT + `BLIPTextTransformer` + ITC projections and temperature, ITM head, LM head.

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
    self.text = BLIPTextTransformer(
        self.vocab_size, self.max_length, self.text_width, self.text_layers, self.text_heads,
        self.mlp_ratio, pad_id=self.pad_id, decode=self.decode, **common)
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

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """Unimodal encoder: `[B, L]` -> normalised ITC embedding float32 `[B, E]` of token 0."""
    features = self.text(tokens, mode="text")
    return l2_normalize(self.text_proj(features[:, 0]))

  def itm_logits(self, image_tokens: jax.Array, tokens: jax.Array) -> jax.Array:
    """Image-grounded encoder: logits float32 `[B, 2]` (no-match, match) of the pairs
    (`image_tokens[b]` `[S, Dv]`, `tokens[b]` `[L]`), read at token 0."""
    features = self.text(tokens, image_tokens, mode="grounded")
    return self.itm_head(features[:, 0]).astype(jnp.float32)

  def lm_logits(self, tokens: jax.Array, image_tokens: jax.Array,
                positions: jax.Array | None = None) -> jax.Array:
    """Image-grounded decoder: next-token logits float32 `[B, T, V]` of `tokens` `[B, T]`
    (row t scores token t + 1); `positions` int `[B, T]` are cache slots when decoding."""
    features = self.text(tokens, image_tokens, mode="decoder", positions=positions)
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
  def init_cache(self, params: PyTree, images: jax.Array, max_length: int) -> BLIPCache:
    """Encodes `images` `[B, H, W, 3]` once; an empty cache for `max_length` positions
    (prompt + new tokens, at most the model's `max_length`)."""
    if not 0 < max_length <= self.max_length:
      raise ValueError(f"cache max_length must be in [1, {self.max_length}] (the text "
                       f"transformer's learned positions), got {max_length}")
    image_tokens = self.apply({"params": params}, images, method=BLIP.encode_image_tokens)
    slots = jnp.broadcast_to(jnp.arange(max_length, dtype=jnp.int32),
                             (image_tokens.shape[0], max_length))
    # A decoder call on an empty "cache" collection allocates it: zero self-attention caches
    # sized by these max_length dummy tokens, and every layer's cross-attention K/V projected
    # from the image tokens once, reused by every step. Under jit the rest of the pass is dead.
    _, kv = self._decode(params, {}, slots, image_tokens, slots)
    return BLIPCache(image_tokens, kv)

  @nn.nowrap
  def decode_step(self, params: PyTree, tokens: jax.Array, cache: BLIPCache,
                  positions: jax.Array) -> tuple[jax.Array, BLIPCache]:
    """The `mmjax.decoding` step function (bind `params` with `functools.partial`).

    Args:
      tokens: int `[B, T]`; positions: int `[B, T]` their absolute positions (cache slots).
      cache: a `BLIPCache` for B rows.
    Returns:
      logits float32 `[B, T, V]` and the updated cache.
    """
    if tokens.ndim != 2 or positions.shape != tokens.shape:
      raise ValueError(f"tokens and positions must both be int [B, T], got shapes "
                       f"{tokens.shape} and {positions.shape}")
    logits, kv = self._decode(params, cache.kv, tokens, cache.image_tokens, positions)
    return logits, BLIPCache(cache.image_tokens, kv)

  @nn.nowrap
  def _decode(self, params: PyTree, kv: PyTree, tokens: jax.Array, image_tokens: jax.Array,
              positions: jax.Array) -> tuple[jax.Array, PyTree]:
    """KV-cached `lm_logits`: (logits `[B, T, V]`, updated "cache" collection)."""
    logits, variables = self.clone(decode=True).apply(
        {"params": params, "cache": kv}, tokens, image_tokens, positions,
        method=BLIP.lm_logits, mutable=["cache"])
    return logits, variables["cache"]
