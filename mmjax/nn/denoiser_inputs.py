"""Input checks shared by the denoisers (`UNet`, `DiT`): one contract, one set of errors.

Both take `(x [B, H, W, C], t, context, context_mask, low_res, aug_level)`; which of the
optional inputs a denoiser needs follows from its `context_dim`, `low_res_channels` and
`aug_level_embedding` fields.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def per_example(name: str, value, batch: int) -> jax.Array:
  """A scalar or `[batch]` value as float32 `[batch]`."""
  value = jnp.asarray(value, jnp.float32)
  if value.ndim == 0:
    return jnp.broadcast_to(value, (batch,))
  if value.shape != (batch,):
    raise ValueError(f"{name} must be a scalar or [B={batch}], got shape {value.shape}")
  return value


def check_denoiser_inputs(kind: str, x, t, context, context_mask, low_res, aug_level, *,
                          context_dim: int | None, low_res_channels: int,
                          aug_level_embedding: bool):
  """Validates a denoiser call; returns (x, t `[B]`, context, bool mask, aug_level `[B]`).

  `kind` ("UNet", "DiT") names the denoiser in the errors.
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"{kind} input x must be [B, H, W, C], got shape {x.shape}")
  batch = x.shape[0]
  t = per_example("t", t, batch)
  if context_dim is None:
    if context is not None or context_mask is not None:
      raise ValueError(f"this {kind} has no cross-attention (context_dim=None) but was given a "
                       "context/context_mask; set context_dim to condition on it")
  else:
    if context is None:
      raise ValueError(f"this {kind} cross-attends (context_dim={context_dim}) and needs "
                       f"context [B, L, {context_dim}]; got None")
    context = jnp.asarray(context)
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != context_dim:
      raise ValueError(f"context must be [B={batch}, L, context_dim={context_dim}], got "
                       f"shape {context.shape}")
    if context_mask is not None:
      context_mask = jnp.asarray(context_mask)
      if context_mask.shape != context.shape[:2]:
        raise ValueError(f"context_mask must be [B, L] = {context.shape[:2]}, got shape "
                         f"{context_mask.shape}")
      context_mask = context_mask.astype(bool)
  if low_res_channels:
    if low_res is None:
      raise ValueError(f"this {kind} has low_res_channels={low_res_channels} and needs "
                       f"low_res [B, h, w, {low_res_channels}]; got None")
    if (jnp.ndim(low_res) != 4 or low_res.shape[0] != batch
        or low_res.shape[3] != low_res_channels):
      raise ValueError(f"low_res must be [B={batch}, h, w, {low_res_channels}], got "
                       f"shape {jnp.shape(low_res)}")
  elif low_res is not None:
    raise ValueError(f"low_res was given but this {kind} has low_res_channels=0")
  if aug_level_embedding:
    if aug_level is None:
      raise ValueError(f"this {kind} has aug_level_embedding=True and needs aug_level [B] in "
                       "[0, 1]; got None")
    aug_level = per_example("aug_level", aug_level, batch)
  elif aug_level is not None:
    raise ValueError(f"aug_level was given but this {kind} has aug_level_embedding=False")
  return x, t, context, context_mask, aug_level
