"""Greedy decoding: the most likely next token at every step."""
import jax
import jax.numpy as jnp

from mmjax.decoding import constraints as constraints_lib
from mmjax.decoding import sampling
from mmjax.decoding import step as step_lib


def greedy(step_fn: step_lib.StepFn, cache, prompt: jax.Array,
           prompt_lengths: jax.Array | None = None, *, max_new_tokens: int, eos_id: int | None,
           pad_id: int = 0, repetition_penalty: float | None = None, min_new_tokens: int = 0,
           constraint: constraints_lib.PrefixTrie | None = None) -> step_lib.DecodeOutput:
  """Greedy continuation of a batch of prompts.

  Args:
    step_fn: the decoder step (see `mmjax.decoding`).
    cache: the decoder's empty cache for B rows, able to hold P + max_new_tokens positions.
    prompt: int32[B, P] right-padded prompts (>= 1 valid token each, e.g. BOS).
    prompt_lengths: int32[B] valid prompt tokens per row; None means all P.
    max_new_tokens: static N, the most tokens generated per row.
    eos_id: end-of-sequence token, or None to always emit N tokens.
    pad_id: written after EOS.
    repetition_penalty: transformers-style penalty (> 1 discourages repeats), or None.
    min_new_tokens: EOS is suppressed for the first `min_new_tokens` tokens.
    constraint: restrict outputs to the candidates of a `PrefixTrie`.

  Returns:
    DecodeOutput with tokens int32[B, N], lengths int32[B] and scores float32[B] = sum of the
    model's raw log-probabilities of the generated tokens (EOS included).
  """
  prompt_lengths = step_lib.check_prompt(prompt, prompt_lengths)
  sampling.check_decoding_args(max_new_tokens, eos_id, pad_id, repetition_penalty,
                               min_new_tokens, constraint)
  return sampling.decode_loop(
      step_fn, cache, prompt, prompt_lengths, lambda _, logits: jnp.argmax(logits, axis=-1),
      max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
      repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens,
      constraint=constraint, num_return_sequences=1)
