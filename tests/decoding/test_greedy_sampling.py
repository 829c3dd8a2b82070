"""Greedy and sampling against a naive uncached decoder loop and against softmax frequencies."""
import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import decoding_testlib as tl
from mmjax import decoding

VOCAB = 6
STEPS = 5
PARAMS = tl.init_params(3, VOCAB)
COND = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16)), jnp.float32)
PROMPT = jnp.array([[2, 3, 4], [5, 0, 0]], jnp.int32)
PROMPT_LENGTHS = jnp.array([3, 1], jnp.int32)


def new_cache(batch=2, cond=COND):
  return tl.init_cache(PARAMS, batch, 3 + STEPS, cond)


@functools.cache
def greedy_fn(**static):
  return tl.fast_jit(lambda params, cache: decoding.greedy(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, max_new_tokens=STEPS,
      eos_id=tl.EOS, pad_id=tl.PAD, **static))


@functools.cache
def sample_fn(max_new_tokens=STEPS, **static):
  return tl.fast_jit(lambda params, cache, rng: decoding.sample(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, rng=rng,
      max_new_tokens=max_new_tokens, eos_id=tl.EOS, pad_id=tl.PAD, **static))


def as_lists(output):
  """Generated tokens per row, cut at the output's lengths."""
  return [list(np.asarray(tokens)[:length]) for tokens, length in zip(output.tokens,
                                                                       output.lengths)]


def test_greedy_matches_naive_uncached_greedy_and_reports_log_probs():
  output = greedy_fn()(PARAMS, new_cache())
  for row in range(2):
    expected = tl.reference_greedy(PARAMS, PROMPT[row], int(PROMPT_LENGTHS[row]), COND[row],
                                   STEPS)
    assert as_lists(output)[row] == expected
    log_probs = tl.sequence_log_probs_reference(PARAMS, PROMPT[row], int(PROMPT_LENGTHS[row]),
                                                expected, COND[row])
    np.testing.assert_allclose(output.scores[row], log_probs.sum(), atol=1e-4)
    assert np.all(np.asarray(output.tokens[row, len(expected):]) == tl.PAD)


def test_greedy_with_kv_cache_equals_greedy_recomputing_the_prefix():
  forward_fn = lambda tokens, cond: tl.forward(PARAMS, tokens, cond)
  recompute = tl.fast_jit(lambda cache: decoding.greedy(
      decoding.recompute_step_fn(forward_fn), cache, PROMPT, PROMPT_LENGTHS,
      max_new_tokens=STEPS, eos_id=tl.EOS))
  slow = recompute(decoding.init_recompute_cache(2, 3 + STEPS, COND))
  fast = greedy_fn()(PARAMS, new_cache())
  np.testing.assert_array_equal(slow.tokens, fast.tokens)
  np.testing.assert_allclose(slow.scores, fast.scores, atol=1e-5)


def test_repetition_penalty_follows_transformers_rule():
  output = greedy_fn(repetition_penalty=3.0)(PARAMS, new_cache())
  plain = greedy_fn()(PARAMS, new_cache())
  assert not np.array_equal(output.tokens, plain.tokens)  # The penalty must matter here.
  for row in range(2):
    expected = tl.reference_greedy(PARAMS, PROMPT[row], int(PROMPT_LENGTHS[row]), COND[row],
                                   STEPS, repetition_penalty=3.0)
    assert as_lists(output)[row] == expected


def test_min_new_tokens_suppresses_eos_and_the_loop_exits_early():
  eager_to_stop = tl.init_params(3, VOCAB, eos_bias=8.0)
  calls = []

  def counting_step(tokens, cache, positions):
    jax.debug.callback(lambda: calls.append(1))
    return tl.make_step_fn(eager_to_stop)(tokens, cache, positions)

  run = tl.fast_jit(lambda cache: decoding.greedy(
      counting_step, cache, PROMPT, PROMPT_LENGTHS, max_new_tokens=STEPS, eos_id=tl.EOS))
  stopped = run(new_cache())
  jax.effects_barrier()
  np.testing.assert_array_equal(stopped.tokens[:, 0], [tl.EOS, tl.EOS])
  np.testing.assert_array_equal(stopped.lengths, [1, 1])
  assert len(calls) == 1  # Prefill only: every row finished at the first token.

  held = greedy_fn(min_new_tokens=3)(eager_to_stop, new_cache())
  assert not np.any(np.asarray(held.tokens[:, :3]) == tl.EOS)
  for row in range(2):
    expected = tl.reference_greedy(eager_to_stop, PROMPT[row], int(PROMPT_LENGTHS[row]),
                                   COND[row], STEPS, min_new_tokens=3)
    assert as_lists(held)[row] == expected


def test_sampling_with_a_fixed_key_is_reproducible():
  run = sample_fn(num_return_sequences=3)
  first = run(PARAMS, new_cache(), jax.random.key(0))
  again = run(PARAMS, new_cache(), jax.random.key(0))
  other = run(PARAMS, new_cache(), jax.random.key(1))
  assert first.tokens.shape == (2, 3, STEPS) and first.scores.shape == (2, 3)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  np.testing.assert_array_equal(first.scores, again.scores)
  assert not np.array_equal(first.tokens, other.tokens)


@pytest.mark.parametrize("warper", [dict(top_k=1), dict(top_p=1e-6)])
def test_top_k_one_and_tiny_top_p_equal_greedy(warper):
  sampled = sample_fn(temperature=2.0, **warper)(PARAMS, new_cache(), jax.random.key(3))
  greedy = greedy_fn()(PARAMS, new_cache())
  np.testing.assert_array_equal(sampled.tokens[:, 0], greedy.tokens)
  np.testing.assert_allclose(sampled.scores[:, 0], greedy.scores, atol=1e-5)


def test_first_token_frequencies_match_tempered_top_k_softmax():
  samples, temperature, top_k = 4000, 0.7, 3
  run = sample_fn(num_return_sequences=samples, max_new_tokens=1, temperature=temperature,
                  top_k=top_k)
  tokens = np.asarray(run(PARAMS, new_cache(), jax.random.key(7)).tokens[:, :, 0])
  for row in range(2):
    length = int(PROMPT_LENGTHS[row])
    logits = tl.forward_one(PARAMS, np.asarray(PROMPT[row, :length]), COND[row])[-1]
    logits = logits.astype(np.float64) / temperature
    kept = np.argsort(-logits)[:top_k]
    probs = np.zeros(VOCAB)
    probs[kept] = np.exp(logits[kept] - logits[kept].max())
    probs /= probs.sum()
    freqs = np.bincount(tokens[row], minlength=VOCAB) / samples
    assert np.all(freqs[probs == 0] == 0)
    np.testing.assert_allclose(freqs, probs, atol=4 * np.sqrt(0.25 / samples))


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=2, eos_id=None), "min_new_tokens needs eos_id"),
])
def test_bad_sampling_arguments_raise_value_error(kwargs, message):
  kwargs = dict(dict(max_new_tokens=2, eos_id=tl.EOS), **kwargs)
  with pytest.raises(ValueError, match=message):
    decoding.sample(tl.make_step_fn(PARAMS), new_cache(), PROMPT, PROMPT_LENGTHS,
                    rng=jax.random.key(0), **kwargs)
