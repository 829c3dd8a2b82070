"""Left-padded prompts (Hugging Face's batching convention) into mmjax's right-padded form.

`transformers` batches prompts of different lengths by padding on the left, with an
attention mask and position ids shifted per row. mmjax's decoding functions take prompts
right-padded with per-row `prompt_lengths` and give every token its true position, so no
padding is ever attended to; `from_left_padded` moves each row's tokens to the front. Generated
tokens are the same as decoding every row alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def from_left_padded(prompt: jax.Array, attention_mask: jax.Array, pad_id: int = 0
                     ) -> tuple[jax.Array, jax.Array]:
  """(right-padded prompt int32 `[B, P]`, prompt_lengths int32 `[B]`) of a left-padded batch.

  Args:
    prompt: int `[B, P]`, row b's tokens in its last `attention_mask[b].sum()` columns.
    attention_mask: `[B, P]` bool or 0/1: 0...0 1...1 per row, at least one 1.
    pad_id: written after each row's tokens.
  Concrete (host) masks are checked: a row that is not left-padded, or has no token, is a
  ValueError naming it. Traceable.
  """
  prompt, mask = jnp.asarray(prompt), jnp.asarray(attention_mask).astype(bool)
  if prompt.ndim != 2 or mask.shape != prompt.shape:
    raise ValueError(f"prompt and attention_mask must both be [B, P], got shapes {prompt.shape} "
                     f"and {mask.shape}")
  _check_left_padded(attention_mask)
  lengths = mask.sum(axis=1).astype(jnp.int32)
  width = prompt.shape[1]
  columns = jnp.arange(width)[None, :]
  # Row b's token i sits in column P - length_b + i.
  source = jnp.clip(columns + (width - lengths)[:, None], 0, width - 1)
  moved = jnp.take_along_axis(prompt, source, axis=1)
  return jnp.where(columns < lengths[:, None], moved, pad_id).astype(jnp.int32), lengths


def _check_left_padded(attention_mask) -> None:
  try:
    mask = np.asarray(attention_mask).astype(bool)
  except jax.errors.TracerArrayConversionError:
    return
  lengths = mask.sum(axis=1)
  expected = np.arange(mask.shape[1])[None, :] >= (mask.shape[1] - lengths)[:, None]
  bad = np.flatnonzero((lengths == 0) | np.any(mask != expected, axis=1))
  if bad.size:
    row = int(bad[0])
    raise ValueError(f"attention_mask row {row} is {mask[row].astype(int).tolist()}: a left-padded "
                     f"row is zeros then ones, with at least one token")
