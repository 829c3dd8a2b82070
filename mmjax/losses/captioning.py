"""Masked next-token cross-entropy of teacher-forced text decoders (captioning, BLIP's LM, VQA
and grounding answers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.losses.coordinate_tokens import token_nll


def caption_loss(logits: jax.Array, tokens: jax.Array, pad_id: int = 0,
                 prompt_mask: jax.Array | None = None, first_bin: int | None = None,
                 num_bins: int = 0, bin_sigma: float = 0.0) -> jax.Array:
  """Mean next-token cross-entropy over the non-padding, non-prompt targets.

  Args:
    logits: `[B, L, V]` of a teacher-forced decoder (logits[:, t] predict tokens[:, t + 1]).
    tokens: int `[B, L]` the same token ids.
    pad_id: targets equal to it are ignored.
    prompt_mask: optional bool `[B, L]`, True at tokens that are given (a prompt) and so are
      not predicted; position 0 (BOS) is never a target anyway.
    first_bin, num_bins, bin_sigma: coordinate-bin tokens get Gaussian targets of width
      bin_sigma bins (`mmjax.losses.coordinate_tokens.token_nll`); bin_sigma 0 (the default)
      is the plain one-hot cross-entropy.
  Returns:
    scalar float32 loss (0 if no position counts).
  """
  if prompt_mask is not None and prompt_mask.shape != tokens.shape:
    raise ValueError(f"prompt_mask must be bool [B, L] = {tokens.shape}, got {prompt_mask.shape}")
  nll = token_nll(logits, tokens, first_bin, num_bins, bin_sigma)
  targets = tokens[:, 1:]
  weights = targets != pad_id
  if prompt_mask is not None:
    weights = weights & ~prompt_mask[:, 1:].astype(bool)
  weights = weights.astype(jnp.float32)
  return (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
