"""Ancestral sampling (temperature, top-k, top-p) and the token-by-token loop greedy shares.

One prefill over the prompt, then a `lax.while_loop` of single-token steps that exits as soon
as every row has emitted EOS (or after `max_new_tokens`).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from mmjax.decoding import constraints as constraints_lib
from mmjax.decoding import processors
from mmjax.decoding import step as step_lib

# choose_fn(step_index, processed_logits float32[B, V]) -> int32[B]
ChooseFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_decoding_args(max_new_tokens, eos_id, pad_id, repetition_penalty, min_new_tokens,
                        constraint):
  """Validates the static arguments shared by every decoding function."""
  step_lib.check_positive("max_new_tokens", max_new_tokens, integer=True)
  step_lib.check_positive("repetition_penalty", repetition_penalty, allow_none=True)
  if min_new_tokens < 0 or int(min_new_tokens) != min_new_tokens:
    raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")
  if min_new_tokens and eos_id is None:
    raise ValueError("min_new_tokens needs eos_id (it works by suppressing EOS), got eos_id=None")
  if constraint is not None:
    if eos_id is None:
      raise ValueError("constrained decoding needs eos_id (every candidate ends with it)")
    if not isinstance(constraint, constraints_lib.PrefixTrie):
      raise ValueError(
          f"constraint must be a PrefixTrie (see build_prefix_trie), got {type(constraint)}")
  if not isinstance(pad_id, int):
    raise ValueError(f"pad_id must be a Python int, got {pad_id!r}")


def process_logits(logits, *, step_index, seen, trie_state, eos_id, repetition_penalty,
                   min_new_tokens, constraint):
  """Repetition penalty, min-length EOS suppression and constraint mask on `[B, V]` scores."""
  if repetition_penalty is not None:
    logits = processors.apply_repetition_penalty(logits, seen, repetition_penalty)
  if min_new_tokens:
    logits = processors.suppress_token(logits, eos_id, step_index < min_new_tokens)
  if constraint is not None:
    logits = constraints_lib.mask_logits(constraint, trie_state, logits)
  return logits


def initial_seen(prompt, prompt_lengths, vocab_size, enabled):
  """bool[B, V] tokens present in each valid prompt, or None when no penalty needs it."""
  if not enabled:
    return None
  valid = jnp.arange(prompt.shape[1])[None, :] < prompt_lengths[:, None]
  return processors.mark_seen(jnp.zeros((prompt.shape[0], vocab_size), bool), prompt, valid)


def decode_loop(step_fn, cache, prompt, prompt_lengths, choose_fn: ChooseFn, *, max_new_tokens,
                eos_id, pad_id, repetition_penalty, min_new_tokens, constraint,
                num_return_sequences) -> step_lib.DecodeOutput:
  """Token-by-token decoding with a caller-supplied choice rule (greedy or sampling).

  Returns DecodeOutput with tokens int32[B * R, N] (rows of one prompt adjacent, R =
  num_return_sequences) and scores = sum of the model's raw log-probabilities
  (log_softmax of the unprocessed logits) of the generated tokens, EOS included.
  """
  logits, cache = step_lib.prefill(step_fn, cache, prompt, prompt_lengths)
  vocab_size = logits.shape[-1]
  seen = initial_seen(prompt, prompt_lengths, vocab_size, repetition_penalty is not None)
  if num_return_sequences > 1:
    logits, cache, prompt_lengths, seen = step_lib.expand_rows(
        (logits, cache, prompt_lengths, seen), num_return_sequences)
  rows = logits.shape[0]
  state = dict(
      step_index=jnp.array(0, jnp.int32),
      cache=cache,
      tokens=jnp.full((rows, max_new_tokens), pad_id, jnp.int32),
      lengths=jnp.zeros((rows,), jnp.int32),
      finished=jnp.zeros((rows,), bool),
      scores=jnp.zeros((rows,), jnp.float32),
      seen=seen,
      trie_state=None if constraint is None else constraints_lib.initial_state(rows),
  )

  def choose_and_record(state, logits):
    t = state["step_index"]
    processed = process_logits(
        logits, step_index=t, seen=state["seen"], trie_state=state["trie_state"], eos_id=eos_id,
        repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens,
        constraint=constraint)
    token = choose_fn(t, processed).astype(jnp.int32)
    active = ~state["finished"]
    token = jnp.where(active, token, pad_id)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    new = dict(state)
    new["tokens"] = jax.lax.dynamic_update_slice(state["tokens"], token[:, None], (0, t))
    new["lengths"] = state["lengths"] + active.astype(jnp.int32)
    new["scores"] = state["scores"] + jnp.where(active, token_log_prob, 0.0)
    if eos_id is not None:
      new["finished"] = state["finished"] | (token == eos_id)
    if state["seen"] is not None:
      new["seen"] = processors.mark_seen(state["seen"], token[:, None], active[:, None])
    if constraint is not None:
      new["trie_state"] = constraints_lib.advance(constraint, state["trie_state"], token)
    new["step_index"] = t + 1
    new["last_token"] = token
    return new

  state = choose_and_record(state, logits)

  def keep_going(state):
    return (state["step_index"] < max_new_tokens) & ~jnp.all(state["finished"])

  def body(state):
    t = state["step_index"]
    positions = (prompt_lengths + t - 1)[:, None]
    logits, cache = step_lib.call_step(step_fn, state["last_token"][:, None], state["cache"],
                                       positions)
    state = dict(state, cache=cache)
    return choose_and_record(state, logits[:, 0].astype(jnp.float32))

  state = jax.lax.while_loop(keep_going, body, state)
  return step_lib.DecodeOutput(state["tokens"], state["lengths"], state["scores"])


def sample(step_fn: step_lib.StepFn, cache, prompt: jax.Array,
           prompt_lengths: jax.Array | None = None, *, rng: jax.Array, max_new_tokens: int,
           eos_id: int | None, pad_id: int = 0, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           repetition_penalty: float | None = None, min_new_tokens: int = 0,
           num_return_sequences: int = 1,
           constraint: constraints_lib.PrefixTrie | None = None) -> step_lib.DecodeOutput:
  """Samples continuations of a batch of prompts.

  Args:
    step_fn: the decoder step (see `mmjax.decoding`).
    cache: the decoder's empty cache for B rows, able to hold P + max_new_tokens positions.
    prompt: int32[B, P] right-padded prompts (>= 1 valid token each, e.g. BOS).
    prompt_lengths: int32[B] valid prompt tokens per row; None means all P.
    rng: PRNG key; the same key gives the same samples.
    max_new_tokens: static N, the most tokens generated per row.
    eos_id: end-of-sequence token (a row stops after emitting it), or None to always emit N.
    pad_id: written after EOS.
    temperature: > 0, divides the logits.
    top_k: keep only the k most likely tokens (None: no limit).
    top_p: nucleus mass in (0, 1] (None: no limit).
    repetition_penalty: transformers-style penalty (> 1 discourages repeats), or None.
    min_new_tokens: EOS is suppressed for the first `min_new_tokens` tokens.
    num_return_sequences: R samples per prompt; the prompt is prefilled once and its cache
      rows repeated R times.
    constraint: restrict outputs to the candidates of a `PrefixTrie`.

  Returns:
    DecodeOutput with tokens int32[B, R, N], lengths int32[B, R], and scores float32[B, R]
    = sum of the model's raw log-probabilities of the generated tokens (EOS included).
  """
  prompt_lengths = step_lib.check_prompt(prompt, prompt_lengths)
  check_decoding_args(max_new_tokens, eos_id, pad_id, repetition_penalty, min_new_tokens,
                      constraint)
  step_lib.check_positive("temperature", temperature)
  step_lib.check_positive("top_k", top_k, allow_none=True, integer=True)
  step_lib.check_positive("num_return_sequences", num_return_sequences, integer=True)
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")

  def choose(step_index, logits):
    logits = processors.apply_temperature(logits, temperature)
    if top_k is not None:
      logits = processors.top_k_filter(logits, top_k)
    if top_p is not None:
      logits = processors.top_p_filter(logits, top_p)
    return jax.random.categorical(jax.random.fold_in(rng, step_index), logits, axis=-1)

  output = decode_loop(
      step_fn, cache, prompt, prompt_lengths, choose, max_new_tokens=max_new_tokens,
      eos_id=eos_id, pad_id=pad_id, repetition_penalty=repetition_penalty,
      min_new_tokens=min_new_tokens, constraint=constraint,
      num_return_sequences=num_return_sequences)
  batch = prompt.shape[0]
  return jax.tree.map(
      lambda x: x.reshape((batch, num_return_sequences) + x.shape[1:]), output)

