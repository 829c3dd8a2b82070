"""The decoder interface: KV-cache step == full forward, prefill, row helpers, candidate scoring."""
import numpy as np
import pytest

import jax.numpy as jnp

import decoding_testlib as tl
from mmjax import decoding

VOCAB = 5
PARAMS = tl.init_params(0, VOCAB)
COND = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16)), jnp.float32)
PROMPT = jnp.array([[2, 3, 4], [4, 0, 0]], jnp.int32)
PROMPT_LENGTHS = jnp.array([3, 1], jnp.int32)


def test_cached_steps_match_uncached_forward():
  """Prefill of a right-padded prompt, then one token per row per step at per-row positions."""
  step_fn = tl.fast_jit(tl.make_step_fn(PARAMS))
  cache = tl.init_cache(PARAMS, 2, 8, COND)
  continuation = np.array([[3, 2, 2, 4], [2, 2, 3, 3]], np.int32)
  logits, cache = step_fn(PROMPT, cache, jnp.broadcast_to(jnp.arange(3), (2, 3)))
  cached = [[np.asarray(logits[0, 2])], [np.asarray(logits[1, 0])]]
  for t in range(continuation.shape[1]):
    positions = (PROMPT_LENGTHS + t)[:, None]
    logits, cache = step_fn(jnp.asarray(continuation[:, t:t + 1]), cache, positions)
    for row in range(2):
      cached[row].append(np.asarray(logits[row, 0]))
  for row in range(2):
    length = int(PROMPT_LENGTHS[row])
    sequence = np.concatenate([np.asarray(PROMPT[row, :length]), continuation[row]])
    full = tl.forward_one(PARAMS, sequence, COND[row])
    np.testing.assert_allclose(np.stack(cached[row]), full[length - 1:], rtol=1e-5, atol=1e-5)


def test_prefill_returns_logits_of_last_valid_prompt_token():
  prefill = tl.fast_jit(lambda cache: decoding.prefill(
      tl.make_step_fn(PARAMS), cache, PROMPT, PROMPT_LENGTHS))
  last_logits, _ = prefill(tl.init_cache(PARAMS, 2, 8, COND))
  expected_0 = tl.forward_one(PARAMS, PROMPT[0], COND[0])[2]
  expected_1 = tl.forward_one(PARAMS, PROMPT[1, :1], COND[1])[0]
  np.testing.assert_allclose(last_logits, np.stack([expected_0, expected_1]), atol=1e-5)


def test_recompute_step_fn_matches_kv_cache_step():
  forward_fn = lambda tokens, cond: tl.forward(PARAMS, tokens, cond)
  recompute = tl.fast_jit(decoding.recompute_step_fn(forward_fn))
  cached = tl.fast_jit(tl.make_step_fn(PARAMS))
  r_cache = decoding.init_recompute_cache(2, 8, COND)
  k_cache = tl.init_cache(PARAMS, 2, 8, COND)
  positions = jnp.broadcast_to(jnp.arange(3), (2, 3))
  r_logits, r_cache = recompute(PROMPT, r_cache, positions)
  k_logits, k_cache = cached(PROMPT, k_cache, positions)
  np.testing.assert_allclose(r_logits, k_logits, atol=1e-5)
  token = jnp.array([[3], [2]], jnp.int32)
  r_logits, r_cache = recompute(token, r_cache, PROMPT_LENGTHS[:, None])
  k_logits, _ = cached(token, k_cache, PROMPT_LENGTHS[:, None])
  np.testing.assert_allclose(r_logits, k_logits, atol=1e-5)
  np.testing.assert_array_equal(r_cache.tokens[:, :4], [[2, 3, 4, 3], [4, 2, 0, 0]])


def test_expand_and_gather_rows_keep_rows_of_one_example_adjacent():
  tree = dict(a=jnp.arange(6).reshape(2, 3), shared_index=jnp.array(7))
  expanded = decoding.expand_rows(tree, 3)
  np.testing.assert_array_equal(expanded["a"], np.repeat(np.arange(6).reshape(2, 3), 3, axis=0))
  assert int(expanded["shared_index"]) == 7
  gathered = decoding.gather_rows(expanded, jnp.array([5, 0]))
  np.testing.assert_array_equal(gathered["a"], [[3, 4, 5], [0, 1, 2]])


def test_sequence_log_probs_matches_uncached_reference():
  candidates = jnp.array([[2, 1, 0], [3, 4, 1], [4, 0, 0]], jnp.int32)
  candidate_lengths = jnp.array([2, 3, 1], jnp.int32)
  score = tl.fast_jit(lambda params, cache: decoding.sequence_log_probs(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, candidates, candidate_lengths))
  got = score(PARAMS, tl.init_cache(PARAMS, 2, 8, COND))
  valid = np.arange(3)[None, :] < np.asarray(candidate_lengths)[:, None]
  for row in range(2):
    per_token = tl.reference_log_probs(PARAMS, PROMPT[row], int(PROMPT_LENGTHS[row]),
                                       candidates, COND[row])
    np.testing.assert_allclose(got[row], np.where(valid, per_token, 0).sum(1), atol=1e-4)


@pytest.mark.parametrize("prompt,lengths,message", [
    (jnp.zeros((2,), jnp.int32), None, "prompt must be int"),
    (jnp.zeros((2, 3), jnp.float32), None, "integer token ids"),
    (jnp.zeros((2, 3), jnp.int32), jnp.array([1, 2, 3]), "prompt_lengths must be int"),
])
def test_bad_prompts_raise_value_error(prompt, lengths, message):
  with pytest.raises(ValueError, match=message):
    decoding.greedy(tl.make_step_fn(PARAMS), tl.init_cache(PARAMS, 2, 8, COND), prompt, lengths,
                    max_new_tokens=2, eos_id=tl.EOS)


def test_step_fn_with_wrong_logits_shape_raises_value_error():
  bad_step = lambda tokens, cache, positions: (jnp.zeros(tokens.shape + (1, VOCAB)), cache)
  with pytest.raises(ValueError, match="step_fn must return logits"):
    decoding.greedy(bad_step, {}, PROMPT, PROMPT_LENGTHS, max_new_tokens=2, eos_id=tl.EOS)


@pytest.mark.parametrize("start, stop", [(1, 3), (3, None)])
def test_banned_tokens_are_never_chosen_and_the_rest_of_the_logits_are_untouched(start, stop):
  step_fn = tl.make_step_fn(PARAMS)
  banned = decoding.banned_tokens_step_fn(step_fn, start, stop)
  positions = jnp.broadcast_to(jnp.arange(3), (2, 3))
  plain, _ = step_fn(PROMPT, tl.init_cache(PARAMS, 2, 8, COND), positions)
  masked, _ = banned(PROMPT, tl.init_cache(PARAMS, 2, 8, COND), positions)
  ids = np.arange(VOCAB)
  out = (ids >= start) & (ids < (VOCAB if stop is None else stop))
  assert np.all(np.isneginf(np.asarray(masked)[..., out]))
  np.testing.assert_array_equal(np.asarray(masked)[..., ~out], np.asarray(plain)[..., ~out])
  # Greedy decoding through it never emits a banned id, though unbanned it would.
  free = decoding.greedy(step_fn, tl.init_cache(PARAMS, 2, 8, COND), PROMPT, PROMPT_LENGTHS,
                         max_new_tokens=4, eos_id=VOCAB + 1, pad_id=0).tokens
  tokens = decoding.greedy(banned, tl.init_cache(PARAMS, 2, 8, COND), PROMPT, PROMPT_LENGTHS,
                           max_new_tokens=4, eos_id=VOCAB + 1, pad_id=0).tokens
  assert not out[np.asarray(tokens)].any()
  assert out[np.asarray(free)].any() or start == 3
