"""Classifier-free guidance with separate conditional and unconditional caches."""
import numpy as np

import jax.numpy as jnp

import decoding_testlib as tl
from mmjax import decoding

VOCAB = 6
STEPS = 5
PARAMS = tl.init_params(31, VOCAB)
COND = jnp.asarray(np.random.default_rng(32).normal(size=(2, 16)), jnp.float32)
NULL_COND = jnp.zeros_like(COND)
PROMPT = jnp.array([[2, 3, 4], [4, 0, 0]], jnp.int32)
NULL_PROMPT = jnp.array([[5, 5, 5], [5, 0, 0]], jnp.int32)  # The caption replaced by nulls.
PROMPT_LENGTHS = jnp.array([3, 1], jnp.int32)


def cache(cond):
  return tl.init_cache(PARAMS, 2, 3 + STEPS, cond)


def guided_cache():
  return decoding.guidance_cache(cache(COND), cache(NULL_COND), NULL_PROMPT, PROMPT_LENGTHS)


GREEDY = tl.fast_jit(lambda params, cache, prompt: decoding.greedy(
    tl.make_step_fn(params), cache, prompt, PROMPT_LENGTHS, max_new_tokens=STEPS,
    eos_id=tl.EOS))
GUIDED_GREEDY = tl.fast_jit(lambda params, cache, scale: decoding.greedy(
    decoding.guided_step_fn(tl.make_step_fn(params), scale), cache, PROMPT, PROMPT_LENGTHS,
    max_new_tokens=STEPS, eos_id=tl.EOS))


def test_scale_one_is_conditional_and_scale_zero_is_unconditional_decoding():
  conditional = GREEDY(PARAMS, cache(COND), PROMPT)
  unconditional = GREEDY(PARAMS, cache(NULL_COND), NULL_PROMPT)
  assert not np.array_equal(conditional.tokens, unconditional.tokens)
  for scale, expected in ((1.0, conditional), (0.0, unconditional)):
    guided = GUIDED_GREEDY(PARAMS, guided_cache(), jnp.float32(scale))
    np.testing.assert_array_equal(guided.tokens, expected.tokens)
    np.testing.assert_allclose(guided.scores, expected.scores, atol=1e-5)


def test_guided_logits_mix_both_streams_at_every_step():
  """Prefill and one generated token, checked against two uncached forward passes."""
  scale = 3.0
  step_fn = tl.fast_jit(decoding.guided_step_fn(tl.make_step_fn(PARAMS), scale))
  positions = jnp.broadcast_to(jnp.arange(3), (2, 3))
  prefill_logits, state = step_fn(PROMPT, guided_cache(), positions)
  next_token = jnp.array([[3], [2]], jnp.int32)
  step_logits, _ = step_fn(next_token, state, PROMPT_LENGTHS[:, None])
  for row in range(2):
    length = int(PROMPT_LENGTHS[row])
    cond_seq = np.append(np.asarray(PROMPT[row, :length]), next_token[row])
    null_seq = np.append(np.asarray(NULL_PROMPT[row, :length]), next_token[row])
    cond = tl.forward_one(PARAMS, cond_seq, COND[row])
    null = tl.forward_one(PARAMS, null_seq, NULL_COND[row])
    expected = null + scale * (cond - null)
    np.testing.assert_allclose(prefill_logits[row, :length], expected[:length], atol=1e-4)
    np.testing.assert_allclose(step_logits[row, 0], expected[length], atol=1e-4)


def test_guided_beam_search_expands_both_caches_together():
  beam = lambda step_fn, cache, prompt: decoding.beam_search(
      step_fn, cache, prompt, PROMPT_LENGTHS, num_beams=2, num_return_sequences=2,
      max_new_tokens=STEPS, eos_id=tl.EOS)
  conditional = tl.fast_jit(lambda params, cache: beam(tl.make_step_fn(params), cache, PROMPT))(
      PARAMS, cache(COND))
  guided = tl.fast_jit(lambda params, cache: beam(
      decoding.guided_step_fn(tl.make_step_fn(params), 1.0), cache, PROMPT))(
          PARAMS, guided_cache())
  np.testing.assert_array_equal(guided.tokens, conditional.tokens)
  np.testing.assert_allclose(guided.scores, conditional.scores, atol=1e-5)
