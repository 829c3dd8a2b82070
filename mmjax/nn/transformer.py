"""Pre-LayerNorm transformer blocks used by every mmjax encoder and decoder."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import initializers
from mmjax.nn.attention import MultiHeadAttention

Dtype = Any

# Names `TransformerBlock.decoder_attention` cannot take: they, or their "ln_" LayerNorms,
# are the block's own sub-layers.
RESERVED_SUBLAYER_NAMES = ("self_attn", "attn", "cross_attn", "cross", "mlp")

# The MLP nonlinearities: "gelu" (tanh or erf form, by `gelu_approximate`) and OpenAI CLIP's
# "quick_gelu", x * sigmoid(1.702 x), which its released weights were trained with.
MLP_ACTIVATIONS = ("gelu", "quick_gelu")
DEFAULT_LAYER_NORM_EPSILON = 1e-6  # flax's default; PyTorch's (open_clip's) is 1e-5


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's GELU approximation `x * sigmoid(1.702 x)` (any shape)."""
  return x * jax.nn.sigmoid(jnp.asarray(1.702, x.dtype) * x)


def check_mlp_activation(name: str) -> None:
  """ValueError unless `name` is one of `MLP_ACTIVATIONS`."""
  if name not in MLP_ACTIVATIONS:
    raise ValueError(f"mlp_activation must be one of {MLP_ACTIVATIONS}, got {name!r}")


def mlp_activation_fn(x: jax.Array, name: str, gelu_approximate: bool) -> jax.Array:
  """The MLP nonlinearity `name` (see `MLP_ACTIVATIONS`) applied to `x` (any shape)."""
  check_mlp_activation(name)
  if name == "quick_gelu":
    return quick_gelu(x)
  return nn.gelu(x, approximate=gelu_approximate)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype = jnp.float32,
               epsilon: float = DEFAULT_LAYER_NORM_EPSILON) -> nn.LayerNorm:
  """LayerNorm with logically partitioned scale/bias (`("embed",)`)."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


def dense(features: int, name: str, axes: tuple[str | None, str | None], *, dtype: Dtype,
          param_dtype: Dtype = jnp.float32, use_bias: bool = True) -> nn.Dense:
  """`nn.Dense` whose kernel `[in, out]` carries logical `axes` and bias `axes[1]`."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(initializers.dense_kernel, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class MlpBlock(nn.Module):
  """Two-layer MLP: `[..., D] -> [..., mlp_dim] -> activation -> [..., D]`.

  Attributes:
    gelu_approximate: tanh approximation of GELU (True) or the exact erf form (False, what
      PyTorch's `nn.GELU()` and open_clip compute); used by mlp_activation="gelu".
    mlp_activation: one of `MLP_ACTIVATIONS`: "gelu" or "quick_gelu" (OpenAI CLIP's weights).
  """
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gelu_approximate: bool = True
  mlp_activation: str = "gelu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = dense(self.mlp_dim, "fc1", ("embed", "mlp"), dtype=self.dtype,
              param_dtype=self.param_dtype)(x)
    h = mlp_activation_fn(h, self.mlp_activation, self.gelu_approximate)
    return dense(width, "fc2", ("mlp", "embed"), dtype=self.dtype,
                 param_dtype=self.param_dtype)(h)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN: `x [B, T, D] * (1 + scale [B, D]) + shift [B, D]` (per example, every token)."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def affine_free_layer_norm(name: str, dtype: Dtype,
                           epsilon: float = DEFAULT_LAYER_NORM_EPSILON) -> nn.LayerNorm:
  """LayerNorm without scale/bias: the adaLN modulation supplies them."""
  return nn.LayerNorm(epsilon=epsilon, use_bias=False, use_scale=False, dtype=dtype, name=name)


class TransformerBlock(nn.Module):
  """x + SelfAttn(LN(x)) [+ CrossAttn(LN(x), context)] + MLP(LN(x)).

  With `adaptive_norm` (DiT's adaLN-Zero), a conditioning vector `condition [B, Dc]` sets the
  self-attention and MLP sub-layers' norms and output gates per example:
    shift, scale, gate = split(Dense(SiLU(condition)))   (one triple per sub-layer)
    x = x + gate * SubLayer(LN(x) * (1 + scale) + shift)
  with affine-free norms and the modulation Dense initialised to zero, so the block starts as
  the identity on x (apart from an unmodulated cross-attention sub-layer, as in PixArt-alpha).

  Attributes:
    cross_attention: add a cross-attention sub-layer over `context` (decoders, fusion).
    decode: KV-cached self-attention (autoregressive decoding) and cross-attention keys/values
      projected once from the context; see `MultiHeadAttention`.
    decoder_attention: name of a second, always causal, self-attention (with its own
      LayerNorm `ln_<name>`) that replaces "self_attn" on calls with `decoder=True`; the
      cross-attention and MLP are shared by both kinds of call. This is BLIP's text
      transformer: one stack run as a bidirectional encoder and as a causal LM decoder.
    context_optional: with `cross_attention`, a call without `context` skips the
      cross-attention sub-layer (BLIP's unimodal text encoder) instead of raising.
    adaptive_norm: adaLN-Zero conditioning on `condition` (above); the call needs it.
    mlp_activation: the MLP's nonlinearity, see `MlpBlock`.
    layer_norm_epsilon: epsilon of every LayerNorm of the block (PyTorch / open_clip: 1e-5).
  """
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  gelu_approximate: bool = True
  decoder_attention: str | None = None
  context_optional: bool = False
  adaptive_norm: bool = False
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, context_mask: jax.Array | None = None,
               causal: bool = False, positions: jax.Array | None = None,
               decoder: bool = False, condition: jax.Array | None = None) -> jax.Array:
    """`x` `[B, T, D]`, `context` `[B, S, Dc]`; masks broadcastable to `[B, H, T, T|S]`.

    `positions` int `[B, T]`: per-row KV-cache slots of the tokens (decode mode only).
    `decoder`: run the causal `decoder_attention` instead of "self_attn".
    `condition` `[B, Dc]`: the adaLN conditioning vector (with `adaptive_norm` only).
    """
    if self.adaptive_norm:
      return self._adaptive(x, context, mask, context_mask, causal, condition)
    if condition is not None:
      raise ValueError("condition was given but this block has adaptive_norm=False")
    if decoder and self.decoder_attention is None:
      raise ValueError("decoder=True needs a block built with decoder_attention=<name>")
    if self.decoder_attention in RESERVED_SUBLAYER_NAMES:
      raise ValueError(f"decoder_attention={self.decoder_attention!r} would clash with the "
                       f"block's own sub-layers; use a name not in {RESERVED_SUBLAYER_NAMES}")
    if decoder:
      self_attn, ln_name = self.decoder_attention, f"ln_{self.decoder_attention}"
    else:
      self_attn, ln_name = "self_attn", "ln_attn"
    h = layer_norm(ln_name, self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    x = x + self._attention(self_attn)(h, mask=mask, causal=causal or decoder, positions=positions)
    if self.cross_attention and (context is not None or not self.context_optional):
      if context is None:
        raise ValueError("this block has cross_attention=True but was called without context")
      h = layer_norm("ln_cross", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
      x = x + self._attention("cross_attn")(h, context, mask=context_mask)
    h = layer_norm("ln_mlp", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
    return x + self._mlp()(h)

  def _mlp(self) -> MlpBlock:
    return MlpBlock(self.mlp_dim, self.dtype, self.param_dtype,
                    gelu_approximate=self.gelu_approximate, mlp_activation=self.mlp_activation,
                    name="mlp")

  def _attention(self, name: str) -> MultiHeadAttention:
    return MultiHeadAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                              implementation=self.attention_impl, decode=self.decode, name=name)

  def _adaptive(self, x, context, mask, context_mask, causal, condition):
    """The adaLN-Zero block (see the class docstring)."""
    if condition is None or condition.ndim != 2 or condition.shape[0] != x.shape[0]:
      raise ValueError(f"adaptive_norm=True needs condition [B={x.shape[0]}, Dc], got "
                       f"{None if condition is None else condition.shape}")
    if self.decoder_attention is not None or self.decode:
      raise ValueError("adaptive_norm does not combine with decoder_attention or decode")
    width = x.shape[-1]
    modulation = nn.Dense(
        6 * width, dtype=self.dtype, param_dtype=self.param_dtype, name="adaln_modulation",
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, "mlp")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(
            nn.silu(condition.astype(self.dtype)))
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        modulation, 6, axis=-1)
    h = modulate(affine_free_layer_norm("ln_attn", self.dtype, self.layer_norm_epsilon)(x),
                 shift_attn, scale_attn)
    x = x + gate_attn[:, None, :] * self._attention("self_attn")(h, mask=mask, causal=causal)
    if self.cross_attention:
      if context is None:
        raise ValueError("this block has cross_attention=True but was called without context")
      h = layer_norm("ln_cross", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
      x = x + self._attention("cross_attn")(h, context, mask=context_mask)
    h = modulate(affine_free_layer_norm("ln_mlp", self.dtype, self.layer_norm_epsilon)(x),
                 shift_mlp, scale_mlp)
    return x + gate_mlp[:, None, :] * self._mlp()(h)


class Transformer(nn.Module):
  """A stack of `TransformerBlock`s with a final LayerNorm.

  Attributes:
    remat: rematerialise each block in the backward pass (`nn.remat`), trading compute for
      activation memory.
    decoder_attention, context_optional, adaptive_norm: see `TransformerBlock`.
    final_norm: end with a LayerNorm ("ln_final"); a DiT applies its own modulated norm.
    mlp_activation, layer_norm_epsilon: every block's (see `TransformerBlock`); the epsilon is
      also ln_final's.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str = "einsum"
  decode: bool = False
  remat: bool = False
  gelu_approximate: bool = True
  decoder_attention: str | None = None
  context_optional: bool = False
  adaptive_norm: bool = False
  final_norm: bool = True
  mlp_activation: str = "gelu"
  layer_norm_epsilon: float = DEFAULT_LAYER_NORM_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               mask: jax.Array | None = None, context_mask: jax.Array | None = None,
               causal: bool = False, positions: jax.Array | None = None,
               decoder: bool = False, condition: jax.Array | None = None) -> jax.Array:
    """`[B, T, D] -> [B, T, D]`; `positions` int `[B, T]` are KV-cache slots (decode mode);
    `decoder` runs every block's causal `decoder_attention` instead of its "self_attn";
    `condition` `[B, Dc]` is every block's adaLN input (with `adaptive_norm`)."""
    # `causal` and `decoder` are Python bools: arguments 5 and 7 counting `self`, as nn.remat
    # numbers them.
    block_cls = (nn.remat(TransformerBlock, static_argnums=(5, 7)) if self.remat
                 else TransformerBlock)
    for i in range(self.num_layers):
      block = block_cls(self.num_heads, self.mlp_dim, self.cross_attention, self.dtype,
                        self.param_dtype, self.attention_impl, self.decode,
                        gelu_approximate=self.gelu_approximate,
                        decoder_attention=self.decoder_attention,
                        context_optional=self.context_optional,
                        adaptive_norm=self.adaptive_norm, mlp_activation=self.mlp_activation,
                        layer_norm_epsilon=self.layer_norm_epsilon, name=f"block_{i}")
      x = block(x, context, mask, context_mask, causal, positions, decoder, condition)
    if not self.final_norm:
      return x
    return layer_norm("ln_final", self.dtype, self.param_dtype, self.layer_norm_epsilon)(x)
