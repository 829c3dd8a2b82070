"""Likelihood of a closed candidate list (rank-based VQA / classification by generation).

BLIP answers VQA on a closed answer list by ranking every answer by its log-likelihood under
the decoder rather than by free generation; this is that ranking, with one prefill per prompt
and one teacher-forced step over all candidates.
"""
import jax
import jax.numpy as jnp

from mmjax.decoding import step as step_lib


def sequence_log_probs(step_fn: step_lib.StepFn, cache, prompt: jax.Array,
                       prompt_lengths: jax.Array | None, candidates: jax.Array,
                       candidate_lengths: jax.Array) -> jax.Array:
  """log P(candidate | prompt) for every prompt and candidate.

  Args:
    step_fn: the decoder step (see `mmjax.decoding`).
    cache: the decoder's empty cache for B rows, able to hold P + L positions.
    prompt: int32[B, P] right-padded prompts.
    prompt_lengths: int32[B] valid prompt tokens per row, or None for all P.
    candidates: int32[C, L] right-padded candidate continuations; append EOS to score
      "the answer and then stop".
    candidate_lengths: int32[C] valid tokens per candidate (>= 1).

  Returns:
    float32[B, C] summed log-probabilities of each candidate's valid tokens.
  """
  prompt_lengths = step_lib.check_prompt(prompt, prompt_lengths)
  if candidates.ndim != 2:
    raise ValueError(f"candidates must be int[C, L] (right-padded), got shape {candidates.shape}")
  num_candidates, cand_len = candidates.shape
  if jnp.shape(candidate_lengths) != (num_candidates,):
    raise ValueError(
        f"candidate_lengths must be int[C] with C={num_candidates}, got shape "
        f"{jnp.shape(candidate_lengths)}")
  batch = prompt.shape[0]
  first_logits, cache = step_lib.prefill(step_fn, cache, prompt, prompt_lengths)
  first_logits, cache, row_lengths = step_lib.expand_rows(
      (first_logits, cache, prompt_lengths), num_candidates)
  tokens = jnp.tile(candidates.astype(jnp.int32), (batch, 1))  # [B * C, L]
  positions = row_lengths[:, None] + jnp.arange(cand_len, dtype=jnp.int32)[None, :]
  # Only tokens 0..L-2 need feeding: their logits predict tokens 1..L-1.
  if cand_len > 1:
    later_logits, _ = step_lib.call_step(step_fn, tokens[:, :-1], cache, positions[:, :-1])
    logits = jnp.concatenate([first_logits[:, None], later_logits.astype(jnp.float32)], axis=1)
  else:
    logits = first_logits[:, None]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token_log_probs = jnp.take_along_axis(log_probs, tokens[:, :, None], axis=-1)[:, :, 0]
  valid = jnp.arange(cand_len)[None, :] < jnp.tile(candidate_lengths, batch)[:, None]
  return jnp.sum(jnp.where(valid, token_log_probs, 0.0), axis=1).reshape(batch, num_candidates)
