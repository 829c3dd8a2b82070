"""Classifier-free guidance for autoregressive decoders (dalle-mini's "super conditioning").

Each step runs the decoder twice, on a conditional and an unconditional stream with separate
caches, and mixes the logits

    logits = uncond + guidance_scale * (cond - uncond)

so scale 1 is plain conditional decoding, 0 plain unconditional decoding and > 1 pushes
samples towards the condition. The wrapper is itself a step function, so greedy, sampling and
beam search all work with guidance (beam search expands and reorders both caches together).

The unconditional stream may read a different prompt (e.g. the caption replaced by padding or
a null token, as DALLE-pytorch does), of the same padded length and the same per-row valid
length as the conditional prompt; conditioning that is not in the tokens (image or text
encoder states) lives in each stream's cache.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmjax.decoding import step as step_lib


class GuidanceCache(NamedTuple):
  """The cache of a guided step function (every leaf batch-first).

  Attributes:
    cond: the decoder cache of the conditional stream.
    uncond: the decoder cache of the unconditional stream.
    uncond_prompt: int32[B, P] prompt the unconditional stream reads at prompt positions.
    prompt_lengths: int32[B] valid prompt tokens per row (same for both streams).
  """
  cond: step_lib.PyTree
  uncond: step_lib.PyTree
  uncond_prompt: jax.Array
  prompt_lengths: jax.Array


def guidance_cache(cond_cache, uncond_cache, uncond_prompt: jax.Array,
                   prompt_lengths: jax.Array | None = None) -> GuidanceCache:
  """Bundles both empty caches with the unconditional prompt `[B, P]` (right-padded)."""
  prompt_lengths = step_lib.check_prompt(uncond_prompt, prompt_lengths)
  return GuidanceCache(cond_cache, uncond_cache, uncond_prompt.astype(jnp.int32), prompt_lengths)


def guided_step_fn(step_fn: step_lib.StepFn, guidance_scale: float | jax.Array,
                   uncond_step_fn: step_lib.StepFn | None = None) -> step_lib.StepFn:
  """Wraps a decoder step into a classifier-free-guided step over a `GuidanceCache`.

  Args:
    step_fn: the conditional decoder step.
    guidance_scale: the mixing weight above (a float or a traced scalar).
    uncond_step_fn: the unconditional decoder step; defaults to `step_fn` (the streams then
      differ by their caches and prompts only).

  Returns:
    step_fn(tokens int32[B, T], GuidanceCache, positions int32[B, T]) -> (logits, cache).
    At positions inside the prompt the unconditional stream reads `uncond_prompt` instead of
    `tokens`; after it, both streams read the generated tokens.
  """
  uncond_step_fn = step_fn if uncond_step_fn is None else uncond_step_fn

  def guided(tokens, cache: GuidanceCache, positions):
    prompt_len = cache.uncond_prompt.shape[1]
    in_prompt = positions < cache.prompt_lengths[:, None]
    prompt_tokens = jnp.take_along_axis(
        cache.uncond_prompt, jnp.clip(positions, 0, prompt_len - 1), axis=1)
    uncond_tokens = jnp.where(in_prompt, prompt_tokens, tokens)
    cond_logits, cond_cache = step_lib.call_step(step_fn, tokens, cache.cond, positions)
    uncond_logits, uncond_cache = step_lib.call_step(
        uncond_step_fn, uncond_tokens, cache.uncond, positions)
    cond_logits = cond_logits.astype(jnp.float32)
    uncond_logits = uncond_logits.astype(jnp.float32)
    logits = uncond_logits + guidance_scale * (cond_logits - uncond_logits)
    return logits, cache._replace(cond=cond_cache, uncond=uncond_cache)

  return guided
