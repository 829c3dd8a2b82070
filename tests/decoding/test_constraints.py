"""Constrained decoding to a candidate list (closed-vocabulary VQA answers) via a prefix trie."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import decoding_testlib as tl
from mmjax import decoding
from mmjax.decoding import constraints

VOCAB = 7
STEPS = 4
CANDIDATES = [[2], [2, 3], [3, 4, 2], [4, 4], [5, 2, 6], [6]]
PARAMS = tl.init_params(21, VOCAB)
COND = jnp.asarray(np.random.default_rng(22).normal(size=(2, 16)), jnp.float32)
PROMPT = jnp.array([[2, 3, 4], [6, 0, 0]], jnp.int32)
PROMPT_LENGTHS = jnp.array([3, 1], jnp.int32)
TRIE = decoding.build_prefix_trie(CANDIDATES, eos_id=tl.EOS)
MEMBERS = {tuple(c) + (tl.EOS,) for c in CANDIDATES}


def new_cache(batch=2):
  return tl.init_cache(PARAMS, batch, 3 + STEPS, COND)


def outputs_of(tokens, lengths):
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  return [tuple(t[:n]) for t, n in zip(tokens.reshape(-1, STEPS), lengths.reshape(-1))]


def candidate_log_probs(row):
  """Reference log P(candidate + EOS | prompt) from the uncached forward."""
  scores = []
  for candidate in CANDIDATES:
    sequence = list(candidate) + [tl.EOS]
    scores.append(tl.sequence_log_probs_reference(
        PARAMS, PROMPT[row], int(PROMPT_LENGTHS[row]), sequence, COND[row]).sum())
  return np.array(scores)


def test_trie_arrays_encode_the_candidates():
  def allowed(path):
    state = constraints.initial_state(1)
    for token in path:
      state = constraints.advance(TRIE, state, jnp.array([token]))
    return set(np.flatnonzero(constraints.allowed_tokens(TRIE, state, VOCAB)[0]))

  assert allowed([]) == {2, 3, 4, 5, 6}
  assert allowed([2]) == {tl.EOS, 3}  # "2" is a candidate and a prefix of "2 3".
  assert allowed([3, 4]) == {2}
  assert allowed([2, 3, tl.EOS]) == set()
  assert allowed([4, 2]) == set()  # Left the trie: nothing is allowed any more.


@pytest.mark.parametrize("sequences,message", [
    ([], "at least one"), ([[2], []], "empty"), ([[2, tl.EOS]], "without eos_id")])
def test_bad_candidate_lists_raise_value_error(sequences, message):
  with pytest.raises(ValueError, match=message):
    decoding.build_prefix_trie(sequences, eos_id=tl.EOS)


def test_greedy_and_sampling_only_yield_candidates():
  greedy = tl.fast_jit(lambda params, cache, trie: decoding.greedy(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, max_new_tokens=STEPS,
      eos_id=tl.EOS, constraint=trie))(PARAMS, new_cache(), TRIE)
  sampled = tl.fast_jit(lambda params, cache, trie, rng: decoding.sample(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, rng=rng, max_new_tokens=STEPS,
      eos_id=tl.EOS, temperature=3.0, num_return_sequences=64, constraint=trie))(
          PARAMS, new_cache(), TRIE, jax.random.key(0))
  assert set(outputs_of(greedy.tokens, greedy.lengths)) <= MEMBERS
  sampled_outputs = outputs_of(sampled.tokens, sampled.lengths)
  assert set(sampled_outputs) <= MEMBERS
  assert len(set(sampled_outputs)) >= 4  # Hot sampling explores, yet never leaves the list.


def test_beam_search_picks_the_highest_scoring_candidate():
  # Each trie depth has at most len(CANDIDATES) edges, so this many beams is exhaustive.
  output = tl.fast_jit(lambda params, cache, trie: decoding.beam_search(
      tl.make_step_fn(params), cache, PROMPT, PROMPT_LENGTHS, num_beams=len(CANDIDATES),
      num_return_sequences=len(CANDIDATES), max_new_tokens=STEPS, eos_id=tl.EOS,
      length_penalty=0.0, constraint=trie))(PARAMS, new_cache(), TRIE)
  by_rank = outputs_of(output.tokens, output.lengths)
  for row in range(2):
    reference = candidate_log_probs(row)
    order = np.argsort(-reference)
    expected = [tuple(CANDIDATES[i]) + (tl.EOS,) for i in order]
    assert by_rank[row * len(CANDIDATES):(row + 1) * len(CANDIDATES)] == expected
    np.testing.assert_allclose(output.scores[row], reference[order], atol=1e-4)

