"""Beam search against exhaustive enumeration of every hypothesis of a tiny model."""
import functools
import itertools

import numpy as np
import pytest

import jax.numpy as jnp

import decoding_testlib as tl
from mmjax import decoding

VOCAB = 5
STEPS = 4
PARAMS = tl.init_params(11, VOCAB, eos_bias=1.0)
COND = jnp.asarray(np.random.default_rng(12).normal(size=(2, 16)), jnp.float32)
PROMPT = jnp.array([[2, 3, 4], [4, 0, 0]], jnp.int32)
PROMPT_LENGTHS = jnp.array([3, 1], jnp.int32)
# Wide enough to keep every prefix and every EOS continuation: (V - 1)^3 * V candidates.
EXACT_BEAMS = (VOCAB - 1) ** (STEPS - 1) * VOCAB


def new_cache(batch=2, cond=COND):
  return tl.init_cache(PARAMS, batch, 3 + STEPS, cond)


@functools.cache
def beam_fn(**static):
  """Jitted beam search; length_penalty is a traced argument, so one compile serves all."""
  return tl.fast_jit(lambda params, cache, prompt, lengths, length_penalty: decoding.beam_search(
      tl.make_step_fn(params), cache, prompt, lengths, max_new_tokens=STEPS, eos_id=tl.EOS,
      length_penalty=length_penalty, **static))


_ENUMERATED = {}


def enumerated_hypotheses(row, params=PARAMS, min_new_tokens=0):
  """Every distinct hypothesis (cut at its first EOS, or STEPS long) with its log-probs."""
  key = (row, id(params), min_new_tokens)
  if key not in _ENUMERATED:
    _ENUMERATED[key] = _enumerate(row, params, min_new_tokens)
  return _ENUMERATED[key]


def _enumerate(row, params, min_new_tokens):
  sequences = np.array(list(itertools.product(range(VOCAB), repeat=STEPS)), np.int32)
  log_probs = tl.reference_log_probs(params, PROMPT[row], int(PROMPT_LENGTHS[row]), sequences,
                                     COND[row])
  hypotheses = {}
  for sequence, per_token in zip(sequences, log_probs):
    if np.any(sequence[:min_new_tokens] == tl.EOS):
      continue
    eos = np.flatnonzero(sequence == tl.EOS)
    length = int(eos[0]) + 1 if eos.size else STEPS
    hypotheses[tuple(sequence[:length])] = per_token[:length].sum()
  return hypotheses


def ranked(row, length_penalty, params=PARAMS, min_new_tokens=0):
  hypotheses = enumerated_hypotheses(row, params, min_new_tokens)
  scores = {h: lp / len(h) ** length_penalty for h, lp in hypotheses.items()}
  return sorted(scores.items(), key=lambda item: -item[1])


def hypotheses_of(output, row):
  return [tuple(np.asarray(output.tokens[row, i, :output.lengths[row, i]]))
          for i in range(output.tokens.shape[1])]


def test_wide_beam_finds_the_exact_best_sequences_for_each_length_penalty():
  run = beam_fn(num_beams=EXACT_BEAMS, num_return_sequences=3)
  best_lengths = set()
  for length_penalty in (0.0, 1.0, 3.0, -1.0):
    output = run(PARAMS, new_cache(), PROMPT, PROMPT_LENGTHS, jnp.float32(length_penalty))
    for row in range(2):
      expected = ranked(row, length_penalty)[:3]
      got = hypotheses_of(output, row)
      np.testing.assert_allclose(output.scores[row], [s for _, s in expected], rtol=1e-5,
                                 atol=1e-5)
      assert got[0] == expected[0][0]
      # The returned scores follow the documented formula for the returned tokens.
      for i, hypothesis in enumerate(got):
        assert output.lengths[row, i] == len(hypothesis)
        np.testing.assert_allclose(
            output.scores[row, i],
            enumerated_hypotheses(row)[hypothesis] / len(hypothesis) ** length_penalty,
            rtol=1e-5, atol=1e-5)
      best_lengths.add(len(got[0]))
  assert len(best_lengths) > 1  # The penalty changed which length wins: the test has teeth.


def test_beam_size_one_equals_greedy():
  greedy = tl.fast_jit(lambda params, cache: decoding.greedy(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, max_new_tokens=STEPS,
      eos_id=tl.EOS))(PARAMS, new_cache())
  beam = beam_fn(num_beams=1)(PARAMS, new_cache(), PROMPT, PROMPT_LENGTHS, jnp.float32(0.0))
  np.testing.assert_array_equal(beam.tokens[:, 0], greedy.tokens)
  np.testing.assert_array_equal(beam.lengths[:, 0], greedy.lengths)
  np.testing.assert_allclose(beam.scores[:, 0], greedy.scores, atol=1e-5)


def test_batched_beam_search_equals_one_prompt_at_a_time():
  """Cache rows (with the per-row conditioning) are expanded once and gathered per beam."""
  run = beam_fn(num_beams=3, num_return_sequences=2)
  batched = run(PARAMS, new_cache(), PROMPT, PROMPT_LENGTHS, jnp.float32(1.0))
  for row in range(2):
    alone = run(PARAMS, new_cache(1, COND[row:row + 1]), PROMPT[row:row + 1],
                PROMPT_LENGTHS[row:row + 1], jnp.float32(1.0))
    np.testing.assert_array_equal(alone.tokens[0], batched.tokens[row])
    np.testing.assert_allclose(alone.scores[0], batched.scores[row], atol=1e-5)
    assert np.all(np.diff(np.asarray(batched.scores[row])) <= 0)  # Best first.
    assert hypotheses_of(batched, row)[0] != hypotheses_of(batched, row)[1]


def test_beam_min_new_tokens_suppresses_eos():
  eager_to_stop = tl.init_params(11, VOCAB, eos_bias=6.0)
  output = beam_fn(num_beams=3, num_return_sequences=3, min_new_tokens=2)(
      eager_to_stop, new_cache(), PROMPT, PROMPT_LENGTHS, jnp.float32(0.0))
  assert not np.any(np.asarray(output.tokens[..., :2]) == tl.EOS)
  assert np.all(np.asarray(output.lengths) >= 3)
  for row in range(2):
    expected = ranked(row, 0.0, eager_to_stop, min_new_tokens=2)[:3]
    assert hypotheses_of(output, row) == [h for h, _ in expected]
    np.testing.assert_allclose(output.scores[row], [s for _, s in expected], atol=1e-5)


def test_more_returned_sequences_than_beams_raises_value_error():
  with pytest.raises(ValueError, match="num_return_sequences=3 must be <= num_beams=2"):
    decoding.beam_search(tl.make_step_fn(PARAMS), new_cache(), PROMPT, PROMPT_LENGTHS,
                         num_beams=2, num_return_sequences=3, max_new_tokens=STEPS,
                         eos_id=tl.EOS)


def reference_beam_search(row, num_beams, length_penalty, params=PARAMS):
  """Plain-Python beam search (transformers' rules) that always runs all STEPS steps.

  Returns the ranked list of (hypothesis, score) over every hypothesis ever finished.
  """
  prompt = list(np.asarray(PROMPT[row, :int(PROMPT_LENGTHS[row])]))
  alive, finished = [((), 0.0)], []
  for _ in range(STEPS):
    candidates = []
    for sequence, log_prob in alive:
      logits = tl.forward_one(params, prompt + list(sequence), COND[row])[-1].astype(np.float64)
      log_probs = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
      candidates += [(sequence + (token,), log_prob + log_probs[token]) for token in range(VOCAB)]
    candidates.sort(key=lambda item: -item[1])
    alive = []
    for rank, (sequence, log_prob) in enumerate(candidates[:2 * num_beams]):
      if sequence[-1] == tl.EOS:
        if rank < num_beams:
          finished.append((sequence, log_prob / len(sequence) ** length_penalty))
      elif len(alive) < num_beams:
        alive.append((sequence, log_prob))
  finished += [(sequence, lp / STEPS ** length_penalty) for sequence, lp in alive]
  return sorted(finished, key=lambda item: -item[1])


@pytest.mark.parametrize("num_beams,num_return,eos_bias", [(2, 1, 3.0), (3, 2, 1.0)])
def test_small_beams_match_a_plain_python_beam_search(num_beams, num_return, eos_bias):
  """Also checks that stopping early (exact bound) never changes the result: with a strong
  EOS bias the finished pool fills early while a length bonus still favours alive beams."""
  params = tl.init_params(11, VOCAB, eos_bias=eos_bias)
  run = beam_fn(num_beams=num_beams, num_return_sequences=num_return)
  for length_penalty in (0.0, 1.0, 2.0, 4.0):
    output = run(params, new_cache(), PROMPT, PROMPT_LENGTHS, jnp.float32(length_penalty))
    for row in range(2):
      expected = reference_beam_search(row, num_beams, length_penalty, params)[:num_return]
      assert hypotheses_of(output, row) == [h for h, _ in expected], (length_penalty, row)
      np.testing.assert_allclose(output.scores[row], [s for _, s in expected], atol=1e-5)


def table_decoder(probabilities):
  """A step function whose next-token distribution depends only on the generation step.

  Args:
    probabilities: [S, V] next-token probabilities for generated tokens 0..S-1.
  Returns:
    (step_fn, cache, prompt) for one prompt of one token.
  """
  table = jnp.asarray(np.log(np.asarray(probabilities) + 1e-12), jnp.float32)

  def step_fn(tokens, cache, positions):
    del tokens
    step = jnp.clip(positions - cache["prompt_lengths"][:, None] + 1, 0, table.shape[0] - 1)
    return table[step], cache

  return step_fn, dict(prompt_lengths=jnp.array([1], jnp.int32)), jnp.array([[2]], jnp.int32)


def test_beam_size_one_ignores_an_eos_ranked_below_the_beam():
  """An EOS that is only second best must not finish early, even if it would outscore the
  greedy path later (transformers' rule that makes beam size 1 equal greedy)."""
  # Tokens (PAD, EOS, A); A = 2.
  step_fn, cache, prompt = table_decoder(
      [[0.0, 0.4, 0.6], [0.05, 0.45, 0.5], [0.05, 0.9, 0.05]])
  beam = tl.fast_jit(lambda: decoding.beam_search(
      step_fn, cache, prompt, num_beams=1, max_new_tokens=3, eos_id=tl.EOS,
      length_penalty=0.0))()
  greedy = tl.fast_jit(lambda: decoding.greedy(
      step_fn, cache, prompt, max_new_tokens=3, eos_id=tl.EOS))()
  np.testing.assert_array_equal(greedy.tokens[0], [2, 2, tl.EOS])
  np.testing.assert_array_equal(beam.tokens[0, 0], greedy.tokens[0])
  np.testing.assert_allclose(beam.scores[0, 0], np.log(0.6 * 0.5 * 0.9), rtol=1e-5)


def test_exact_stopping_waits_for_a_longer_hypothesis_the_length_penalty_favours():
  """EOS first scores log(0.55) = -0.60; the alive beam (log 0.223 = -1.50) can still reach
  -1.50 / 3 = -0.50 at length 3, so early_stopping=False must not stop at step 0."""
  # Tokens (PAD, EOS, A, B); A = 2.
  step_fn, cache, prompt = table_decoder([
      [0.005, 0.55, 0.223, 0.222], [0.001, 0.001, 0.997, 0.001], [0.001, 0.997, 0.001, 0.001]])
  search = lambda early: tl.fast_jit(lambda: decoding.beam_search(
      step_fn, cache, prompt, num_beams=1, max_new_tokens=3, eos_id=tl.EOS, length_penalty=1.0,
      early_stopping=early))()
  exact, early = search(False), search(True)
  np.testing.assert_array_equal(exact.tokens[0, 0], [2, 2, tl.EOS])
  np.testing.assert_allclose(exact.scores[0, 0], np.log(0.223 * 0.997 * 0.997) / 3, rtol=1e-4)
  np.testing.assert_array_equal(early.tokens[0, 0], [tl.EOS, 0, 0])  # Stops with the pool full.
