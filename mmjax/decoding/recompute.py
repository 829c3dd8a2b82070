"""A step function without a KV cache: recompute the whole sequence at every step.

For decoders that only have a full forward pass (and as the baseline the KV-cache path is
benchmarked and tested against). The "cache" is the token buffer itself.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from mmjax.decoding import step as step_lib

# forward_fn(tokens int32[B, L], context) -> logits float[B, L, V], causal in the tokens.
ForwardFn = Callable[[jax.Array, Any], jax.Array]


class RecomputeCache(NamedTuple):
  """Attributes: tokens int32[B, L] written so far (L = max length); context, a batch-first
  PyTree handed to the forward function (e.g. image embeddings), or None."""
  tokens: jax.Array
  context: Any


def init_recompute_cache(batch_size: int, max_length: int, context: Any = None,
                         pad_id: int = 0) -> RecomputeCache:
  """An empty token buffer of `max_length` positions for `batch_size` rows."""
  return RecomputeCache(jnp.full((batch_size, max_length), pad_id, jnp.int32), context)


def recompute_step_fn(forward_fn: ForwardFn) -> step_lib.StepFn:
  """Turns a causal full forward pass into a step function over a `RecomputeCache`.

  Each call writes `tokens` at `positions` into the buffer, runs `forward_fn` over all L
  positions and returns the logits at `positions`. Later positions hold padding, which a
  causal forward never lets earlier positions see.
  """
  def step_fn(tokens, cache: RecomputeCache, positions):
    rows = jnp.arange(tokens.shape[0])[:, None]
    buffer = cache.tokens.at[rows, positions].set(tokens.astype(jnp.int32), mode="drop")
    logits = forward_fn(buffer, cache.context)
    max_length = buffer.shape[1]
    step_logits = jnp.take_along_axis(
        logits, jnp.clip(positions, 0, max_length - 1)[:, :, None], axis=1)
    return step_logits, RecomputeCache(buffer, cache.context)

  return step_fn
