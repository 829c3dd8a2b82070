"""Frequencies of whole sampled sequences against the exact distribution of a bigram model.

The step function reads the next-token logits off a fixed table indexed by the previous token,
so the probability of a sequence is the product of its per-step conditionals: after each
step's warpers (temperature, top-k, top-p) or trie mask, renormalised. Many rows in one batch
are sampled at once and the counts of every sequence go through a chi-square test. Checking
whole sequences, not first tokens, is what catches a sampler whose steps share one random key:
its draws at different steps of a row are then dependent.
"""
import collections
import functools

import numpy as np
import pytest
from scipy import stats

import jax
import jax.numpy as jnp

import decoding_testlib as tl
from mmjax import decoding

# NEXT_TOKEN_PROBS[a, b] = P(next = b | previous = a). No ties within a row, so that top-k and
# top-p keep well-defined sets; every top-p nucleus mass boundary is >= 0.02 away from TOP_P.
NEXT_TOKEN_PROBS = np.array([
    [0.10, 0.50, 0.25, 0.15],
    [0.40, 0.05, 0.20, 0.35],
    [0.25, 0.30, 0.07, 0.38],
    [0.75, 0.12, 0.09, 0.04],
])
VOCAB = NEXT_TOKEN_PROBS.shape[0]
TOP_P = 0.7  # nuclei of sizes 2, 2, 3, 1 on the untempered rows
PROMPTS = jnp.array([[0], [2]], jnp.int32)
SAMPLES_PER_PROMPT = 10_000
MIN_P_VALUE = 1e-4


def bigram_step_fn(tokens, cache, positions):
  """Logits `[B, T, V]` = log NEXT_TOKEN_PROBS[tokens]; the cache only carries a batch axis."""
  del positions
  log_table = jnp.log(jnp.asarray(NEXT_TOKEN_PROBS, jnp.float32))
  return log_table[tokens], cache


def new_cache(batch):
  return {"row": jnp.zeros((batch,), jnp.int32)}


def warped_probs(probs, temperature=1.0, top_k=None, top_p=None):
  """Next-token table `[V, V]` after temperature -> top-k -> top-p, rows renormalised."""
  out = []
  for row in probs:
    row = row ** (1 / temperature)
    row = row / row.sum()
    order = np.argsort(-row)
    if top_k is not None:
      row[order[top_k:]] = 0
      row = row / row.sum()
    if top_p is not None:
      nucleus, mass = [], 0.0
      for token in order:  # the most likely tokens until their mass reaches top_p
        if mass >= top_p:
          break
        nucleus.append(token)
        mass += row[token]
      row[np.setdiff1d(order, nucleus)] = 0
      row = row / row.sum()
    out.append(row)
  return np.array(out)


def assert_frequencies_match(samples, probs):
  """Chi-square test of sampled sequences (tuples) against {sequence: probability}.

  A sequence of probability 0 must never be drawn; cells expected fewer than 5 times are
  pooled into one so that the chi-square approximation holds.
  """
  counts = collections.Counter(samples)
  impossible = {s: c for s, c in counts.items() if probs.get(s, 0.0) == 0.0}
  assert not impossible, f"sequences of probability 0 were sampled: {impossible}"
  total = len(samples)
  possible = sorted(s for s, p in probs.items() if p > 0)
  observed = np.array([counts[s] for s in possible], np.float64)
  expected = np.array([probs[s] * total for s in possible])
  np.testing.assert_allclose(expected.sum(), total, rtol=1e-9)
  small = expected < 5
  if small.any():
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
  p_value = stats.chisquare(observed, expected).pvalue
  assert p_value > MIN_P_VALUE, (
      f"chi-square p-value {p_value:.3g} over {len(observed)} cells; worst cells: "
      + str(sorted(zip(possible, observed, expected.round(1)),
                   key=lambda c: -abs(c[1] - c[2]) / np.sqrt(max(c[2], 1)))[:5]))


def sampled_sequences(output):
  """{prompt index: list of generated token tuples (cut at the lengths)}."""
  tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
  return {b: [tuple(t[:n].tolist()) for t, n in zip(tokens[b], lengths[b])]
          for b in range(len(tokens))}


@functools.cache
def sample_fn(max_new_tokens, eos_id, constrained=False, **warpers):
  constraint = TRIE if constrained else None
  return tl.fast_jit(lambda rng: decoding.sample(
      bigram_step_fn, new_cache(len(PROMPTS)), PROMPTS, rng=rng, max_new_tokens=max_new_tokens,
      eos_id=eos_id, num_return_sequences=SAMPLES_PER_PROMPT, constraint=constraint,
      **warpers))


def exact_sequence_probs(first_token, step_probs, length):
  """{(x_1..x_L): prod_t step_probs[x_{t-1}, x_t]} with x_0 = first_token."""
  probs = {}
  for sequence in np.ndindex(*(VOCAB,) * length):
    previous, p = first_token, 1.0
    for token in sequence:
      p *= step_probs[previous, token]
      previous = token
    probs[tuple(sequence)] = p
  return probs


@pytest.mark.parametrize("warpers", [
    dict(), dict(temperature=0.5), dict(top_k=2), dict(top_p=TOP_P),
    dict(temperature=0.8, top_k=3, top_p=TOP_P),
], ids=lambda w: "-".join(f"{k}={v}" for k, v in w.items()) or "plain")
def test_sequences_of_three_follow_the_product_of_warped_conditionals(warpers):
  step_probs = warped_probs(NEXT_TOKEN_PROBS, **warpers)
  output = sample_fn(3, None, **warpers)(jax.random.key(11))
  for b, samples in sampled_sequences(output).items():
    assert_frequencies_match(samples, exact_sequence_probs(int(PROMPTS[b, 0]), step_probs, 3))


def test_top_p_nuclei_of_the_table_are_those_the_test_expects():
  # Guards the reference itself: the sizes of the nuclei that the top-p test relies on.
  kept = (warped_probs(NEXT_TOKEN_PROBS, top_p=TOP_P) > 0).sum(axis=1)
  np.testing.assert_array_equal(kept, [2, 2, 3, 1])


EOS = 3
CANDIDATES = [[1], [1, 2], [2, 0, 1], [2, 2], [0], [0, 1, 1]]
TRIE = decoding.build_prefix_trie(CANDIDATES, eos_id=EOS)


def constrained_candidate_probs(first_token):
  """{candidate + EOS: probability} under per-step masking to the trie, renormalised per step.

  The allowed next tokens of a prefix are read off the candidate list directly (not off the
  PrefixTrie arrays): the next token of every candidate extending the prefix, and EOS when the
  prefix is itself a candidate.
  """
  probs = {}
  for candidate in CANDIDATES:
    sequence = tuple(candidate) + (EOS,)
    previous, p = first_token, 1.0
    for t, token in enumerate(sequence):
      prefix = list(sequence[:t])
      allowed = {c[t] for c in CANDIDATES if len(c) > t and c[:t] == prefix}
      if prefix in CANDIDATES:
        allowed.add(EOS)
      p *= NEXT_TOKEN_PROBS[previous, token] / NEXT_TOKEN_PROBS[previous, sorted(allowed)].sum()
      previous = token
    probs[sequence] = p
  return probs


def test_constrained_sampling_follows_the_renormalised_trie_distribution():
  output = sample_fn(4, EOS, constrained=True)(jax.random.key(12))
  for b, samples in sampled_sequences(output).items():
    probs = constrained_candidate_probs(int(PROMPTS[b, 0]))
    np.testing.assert_allclose(sum(probs.values()), 1.0, rtol=1e-12)
    assert_frequencies_match(samples, probs)
