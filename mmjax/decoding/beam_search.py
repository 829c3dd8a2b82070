"""Beam search with length penalty, early stopping and several returned sequences.

Follows transformers' beam search: at each step the 2k best continuations of the k alive beams
are taken; those ending in EOS (and ranked among the best k) enter a pool of k finished
hypotheses, the best k others stay alive. Beam scores are sums of log-probabilities
(log_softmax of the logits, then the processors), and a finished hypothesis of L generated
tokens (EOS included) is ranked by

    score = sum_log_probs / L ** length_penalty        (transformers' convention)

so `length_penalty > 0` favours longer sequences and 0 ranks by plain log-probability. Beams
still alive after `max_new_tokens` join the pool with L = max_new_tokens.

The prompt is prefilled once for B rows, then every cache leaf is repeated k times along the
batch axis, once; beams are reordered by gathering cache rows (LAVIS #142), within each prompt's
k rows, so the attention's `SlotKVCache` moves only its slot table, not its K/V.
"""
import jax
import jax.numpy as jnp

from mmjax.decoding import constraints as constraints_lib
from mmjax.decoding import processors
from mmjax.decoding import sampling
from mmjax.decoding import step as step_lib

NEG_INF = -jnp.inf


def _penalised(log_probs, length, length_penalty):
  return log_probs / jnp.asarray(length, jnp.float32) ** length_penalty


def _take(array, index):
  """Gathers along axis 1 of `array` [B, M, ...] with `index` int[B, K]."""
  index = index.reshape(index.shape + (1,) * (array.ndim - 2))
  return jnp.take_along_axis(array, index, axis=1)


def beam_search(step_fn: step_lib.StepFn, cache, prompt: jax.Array,
                prompt_lengths: jax.Array | None = None, *, num_beams: int,
                max_new_tokens: int, eos_id: int | None, pad_id: int = 0,
                length_penalty: float = 1.0, early_stopping: bool = False,
                num_return_sequences: int = 1, repetition_penalty: float | None = None,
                min_new_tokens: int = 0,
                constraint: constraints_lib.PrefixTrie | None = None) -> step_lib.DecodeOutput:
  """Beam search over a batch of prompts.

  Args:
    step_fn: the decoder step (see `mmjax.decoding`).
    cache: the decoder's empty cache for B rows (not B * num_beams), able to hold
      P + max_new_tokens positions.
    prompt: int32[B, P] right-padded prompts (>= 1 valid token each, e.g. BOS).
    prompt_lengths: int32[B] valid prompt tokens per row; None means all P.
    num_beams: k, beams per prompt.
    max_new_tokens: static N, the most tokens generated per row.
    eos_id: end-of-sequence token, or None (then every hypothesis has N tokens).
    pad_id: written after EOS.
    length_penalty: exponent alpha of the length normalisation above.
    early_stopping: True stops a prompt as soon as k hypotheses are finished (transformers'
      `early_stopping=True`). False stops it only when no alive beam can still beat the worst
      finished one, a bound that is exact for any length penalty (transformers' "never"), so
      the result equals running all N steps.
    num_return_sequences: R <= k best hypotheses returned per prompt.
    repetition_penalty: transformers-style penalty on the beam log-probabilities, or None.
    min_new_tokens: EOS is suppressed for the first `min_new_tokens` tokens.
    constraint: restrict outputs to the candidates of a `PrefixTrie`.

  Returns:
    DecodeOutput with tokens int32[B, R, N], lengths int32[B, R] and scores float32[B, R]
    (the length-penalised beam scores above), best first.
  """
  prompt_lengths = step_lib.check_prompt(prompt, prompt_lengths)
  sampling.check_decoding_args(max_new_tokens, eos_id, pad_id, repetition_penalty,
                               min_new_tokens, constraint)
  step_lib.check_positive("num_beams", num_beams, integer=True)
  step_lib.check_positive("num_return_sequences", num_return_sequences, integer=True)
  if num_return_sequences > num_beams:
    raise ValueError(
        f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")
  batch, beams, steps = prompt.shape[0], num_beams, max_new_tokens

  logits, cache = step_lib.prefill(step_fn, cache, prompt, prompt_lengths)
  vocab_size = logits.shape[-1]
  seen = sampling.initial_seen(prompt, prompt_lengths, vocab_size, repetition_penalty is not None)
  logits, cache, beam_prompt_lengths, seen = step_lib.expand_rows(
      (logits, cache, prompt_lengths, seen), beams, share=True)
  num_candidates = min(2 * beams, beams * vocab_size)
  # Only beam 0 starts alive, so the first step does not pick k copies of one token.
  alive_log_probs = jnp.tile(
      jnp.array([0.0] + [NEG_INF] * (beams - 1), jnp.float32), (batch, 1))
  state = dict(
      step_index=jnp.array(0, jnp.int32),
      cache=cache,
      alive_tokens=jnp.full((batch, beams, steps), pad_id, jnp.int32),
      alive_log_probs=alive_log_probs,
      finished_tokens=jnp.full((batch, beams, steps), pad_id, jnp.int32),
      finished_scores=jnp.full((batch, beams), NEG_INF, jnp.float32),
      finished_lengths=jnp.zeros((batch, beams), jnp.int32),
      done=jnp.zeros((batch,), bool),
      seen=seen,
      trie_state=(None if constraint is None else
                  constraints_lib.initial_state(batch * beams)),
      last_token=jnp.full((batch * beams,), pad_id, jnp.int32),
  )

  def advance_beams(state, logits):
    """One beam step from logits [B * k, V] for the next token of every alive beam."""
    t = state["step_index"]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_probs = sampling.process_logits(
        log_probs, step_index=t, seen=state["seen"], trie_state=state["trie_state"],
        eos_id=eos_id, repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens,
        constraint=constraint)
    totals = state["alive_log_probs"][:, :, None] + log_probs.reshape(batch, beams, vocab_size)
    cand_log_probs, cand_index = jax.lax.top_k(totals.reshape(batch, -1), num_candidates)
    cand_beam, cand_token = cand_index // vocab_size, cand_index % vocab_size
    cand_tokens = _take(state["alive_tokens"], cand_beam)
    cand_tokens = cand_tokens.at[:, :, t].set(cand_token)
    if eos_id is None:
      cand_is_eos = jnp.zeros(cand_token.shape, bool)
    else:
      cand_is_eos = cand_token == eos_id
    finite = jnp.isfinite(cand_log_probs)

    # Finished pool: EOS continuations ranked among the best k join the k kept so far.
    rank = jnp.arange(num_candidates)[None, :]
    joins = cand_is_eos & finite & (rank < beams)
    cand_scores = jnp.where(joins, _penalised(cand_log_probs, t + 1, length_penalty), NEG_INF)
    pool_scores = jnp.concatenate([state["finished_scores"], cand_scores], axis=1)
    pool_tokens = jnp.concatenate([state["finished_tokens"], cand_tokens], axis=1)
    pool_lengths = jnp.concatenate(
        [state["finished_lengths"], jnp.full(cand_token.shape, t + 1, jnp.int32)], axis=1)
    finished_scores, pool_index = jax.lax.top_k(pool_scores, beams)
    finished_tokens = _take(pool_tokens, pool_index)
    finished_lengths = _take(pool_lengths, pool_index)

    # Alive beams: the best k continuations that did not end.
    alive_log_probs, keep = jax.lax.top_k(jnp.where(cand_is_eos, NEG_INF, cand_log_probs), beams)
    alive_tokens = _take(cand_tokens, keep)
    origin = _take(cand_beam, keep)
    new_token = _take(cand_token, keep)

    # A prompt already done keeps its beams as they were.
    done = state["done"]
    keep_old = lambda old, new: jnp.where(done.reshape((batch,) + (1,) * (new.ndim - 1)), old, new)
    alive_log_probs = keep_old(state["alive_log_probs"], alive_log_probs)
    alive_tokens = keep_old(state["alive_tokens"], alive_tokens)
    finished_scores = keep_old(state["finished_scores"], finished_scores)
    finished_tokens = keep_old(state["finished_tokens"], finished_tokens)
    finished_lengths = keep_old(state["finished_lengths"], finished_lengths)
    origin = keep_old(jnp.broadcast_to(jnp.arange(beams), origin.shape), origin)
    source_rows = (jnp.arange(batch)[:, None] * beams + origin).reshape(-1)
    new_token = new_token.reshape(-1)

    pool_full = jnp.all(jnp.isfinite(finished_scores), axis=1)
    best_alive = alive_log_probs[:, 0]
    if early_stopping:
      now_done = pool_full
    else:
      # Log-probabilities only fall, so an alive beam's final score is at most this bound.
      bound = jnp.maximum(_penalised(best_alive, t + 2, length_penalty),
                          _penalised(best_alive, steps, length_penalty))
      now_done = pool_full & (bound <= finished_scores[:, -1])
    now_done |= ~jnp.isfinite(best_alive)

    new = dict(state)
    new.update(
        step_index=t + 1, alive_tokens=alive_tokens, alive_log_probs=alive_log_probs,
        finished_tokens=finished_tokens, finished_scores=finished_scores,
        finished_lengths=finished_lengths, done=done | now_done, last_token=new_token,
        cache=step_lib.gather_rows(state["cache"], source_rows, group_size=beams))
    if state["seen"] is not None:
      new["seen"] = processors.mark_seen(
          step_lib.gather_rows(state["seen"], source_rows), new_token[:, None])
    if constraint is not None:
      new["trie_state"] = constraints_lib.advance(
          constraint, step_lib.gather_rows(state["trie_state"], source_rows), new_token)
    return new

  state = advance_beams(state, logits)

  def keep_going(state):
    return (state["step_index"] < steps) & ~jnp.all(state["done"])

  def body(state):
    t = state["step_index"]
    positions = (beam_prompt_lengths + t - 1)[:, None]
    logits, cache = step_lib.call_step(step_fn, state["last_token"][:, None], state["cache"],
                                       positions)
    return advance_beams(dict(state, cache=cache), logits[:, 0].astype(jnp.float32))

  state = jax.lax.while_loop(keep_going, body, state)

  # Prompts not done ran out of steps: their alive beams compete as hypotheses of N tokens.
  alive_scores = jnp.where(state["done"][:, None], NEG_INF,
                           _penalised(state["alive_log_probs"], steps, length_penalty))
  pool_scores = jnp.concatenate([state["finished_scores"], alive_scores], axis=1)
  pool_tokens = jnp.concatenate([state["finished_tokens"], state["alive_tokens"]], axis=1)
  pool_lengths = jnp.concatenate(
      [state["finished_lengths"], jnp.full((batch, beams), steps, jnp.int32)], axis=1)
  scores, index = jax.lax.top_k(pool_scores, num_return_sequences)
  return step_lib.DecodeOutput(_take(pool_tokens, index), _take(pool_lengths, index), scores)
