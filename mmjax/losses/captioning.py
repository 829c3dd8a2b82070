"""Masked next-token cross-entropy of teacher-forced text decoders (captioning, BLIP's LM, VQA
and grounding answers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def caption_loss(logits: jax.Array, tokens: jax.Array, pad_id: int = 0,
                 prompt_mask: jax.Array | None = None) -> jax.Array:
  """Mean next-token cross-entropy over the non-padding, non-prompt targets.

  Args:
    logits: `[B, L, V]` of a teacher-forced decoder (logits[:, t] predict tokens[:, t + 1]).
    tokens: int `[B, L]` the same token ids.
    pad_id: targets equal to it are ignored.
    prompt_mask: optional bool `[B, L]`, True at tokens that are given (a prompt) and so are
      not predicted; position 0 (BOS) is never a target anyway.
  Returns:
    scalar float32 loss (0 if no position counts).
  """
  if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
    raise ValueError(f"logits must be [B, L, V] and tokens [B, L] with the same B, L; got "
                     f"{logits.shape} and {tokens.shape}")
  if prompt_mask is not None and prompt_mask.shape != tokens.shape:
    raise ValueError(f"prompt_mask must be bool [B, L] = {tokens.shape}, got {prompt_mask.shape}")
  targets = tokens[:, 1:]
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  weights = targets != pad_id
  if prompt_mask is not None:
    weights = weights & ~prompt_mask[:, 1:].astype(bool)
  weights = weights.astype(jnp.float32)
  return -(target_log_probs * weights).sum() / jnp.maximum(weights.sum(), 1.0)
