"""Text-to-image denoiser: a UNet or DiT conditioned on a jointly trained text encoder's tokens.

The text encoder's per-token features are the denoiser's cross-attention context; a learned
null context stands in for the text when the condition is dropped (classifier-free guidance).
The denoiser is `model.denoiser` (`{"name": "unet", ...}` or `{"name": "dit", ...}`).
`mmjax.train.tasks.diffusion` trains it; `denoise` is the library's `denoise_fn` contract.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.dit import DiT
from mmjax.nn.text import TextTransformer
from mmjax.nn.unet import UNet

# The registry names `model.denoiser.name` may take.
DENOISERS = ("unet", "dit")


class TextToImageDenoiser(nn.Module):
  """Denoiser conditioned on text-encoder tokens, with a learned null context.

  Attributes:
    text: the text encoder; its per-token features `[B, L, Dt]` are the denoiser's context.
    denoiser: a `UNet` or `DiT`; its `context_dim` must equal the text width Dt.
  """
  text: TextTransformer
  denoiser: UNet | DiT

  def setup(self):
    if self.denoiser.context_dim != self.text.width:
      raise ValueError(f"the denoiser's context_dim={self.denoiser.context_dim} must equal the "
                       f"text encoder's width={self.text.width}")
    self.null_context = self.param(
        "null_context", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                     (None, "embed")),
        (self.text.context_length, self.text.width), jnp.float32)

  def encode_text(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token ids `[B, L]` -> (context `[B, L, Dt]` float32, context_mask `[B, L]` bool)."""
    features, _ = self.text(tokens)
    return features.astype(jnp.float32), tokens != self.text.pad_id

  def null_condition(self, length: int) -> tuple[jax.Array, jax.Array]:
    """The unconditional context `[L, Dt]` and its all-True mask `[L]`."""
    return self.null_context[:length], jnp.ones((length,), bool)

  def denoise(self, x_t: jax.Array, t: jax.Array, context: jax.Array,
              context_mask: jax.Array, **denoiser_inputs: jax.Array) -> jax.Array:
    """`x_t [B, H, W, C]`, `t [B]` -> model output `[B, H, W, C]` float32.

    `denoiser_inputs`: further conditioning (a super-resolution stage's `low_res`,
    `aug_level`)."""
    return self.denoiser(x_t, t, context=context, context_mask=context_mask, **denoiser_inputs)

  def __call__(self, x_t: jax.Array, t: jax.Array, tokens: jax.Array,
               **denoiser_inputs: jax.Array) -> jax.Array:
    """Conditional output for `tokens [B, L]` (touches every parameter, for `init`)."""
    context, mask = self.encode_text(tokens)
    self.null_condition(tokens.shape[1])
    return self.denoise(x_t, t, context, mask, **denoiser_inputs)
