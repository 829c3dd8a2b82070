"""What the image-conditioned decoders' tests share: random weights in every leaf, and KV-cached
decoding checked against recomputing the whole sequence every step."""
import functools

import jax
import numpy as np

from mmjax import decoding


def randomised(params, seed):
  """Random values in every leaf (zero biases and unit norms too), float32: a freshly
  initialised decoder's near-zero outputs would decode every row to the same tokens."""
  rng = np.random.default_rng(seed)
  def randomise(x):
    x = np.asarray(x)
    return (0.3 * rng.normal(size=x.shape) + (x if x.ndim == 1 else 0)).astype(np.float32)
  return jax.tree.map(randomise, params)


def assert_cached_decoding_equals_recomputing(model, params, init_cache, context, prompt,
                                              lengths, max_length, method):
  """`method` ("greedy" or "beam_search", 3 beams) from `model.init_cache`'s cache gives the
  tokens and scores of recomputing `model.apply(params, *context, tokens)` over the whole
  buffer at every step, and distinct rows.

  Args:
    init_cache: params -> the model's empty cache for the prompt's rows.
    context: the model's inputs before the tokens, one row per prompt row (beam search
      expands them with the rows).
    prompt, lengths: int `[B, P]` right-padded prompts and their lengths `[B]`.
  """
  options = dict(max_new_tokens=max_length - prompt.shape[1], eos_id=None)
  if method == "beam_search":
    options["num_beams"] = 3
  run = getattr(decoding, method)

  @jax.jit
  def cached(params):
    return run(functools.partial(model.decode_step, params), init_cache(params), prompt,
               lengths, **options)

  @jax.jit
  def recomputed(params):
    forward = lambda tokens, ctx: model.apply({"params": params}, *ctx, tokens)
    cache = decoding.init_recompute_cache(prompt.shape[0], max_length, tuple(context))
    return run(decoding.recompute_step_fn(forward), cache, prompt, lengths, **options)

  fast, slow = cached(params), recomputed(params)
  np.testing.assert_array_equal(fast.tokens, slow.tokens)
  np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-4, rtol=1e-4)
  # Distinct continuations per row: the conditioning and prompts matter, not a constant decode.
  assert len({tuple(np.asarray(row).ravel()) for row in fast.tokens}) == prompt.shape[0]
