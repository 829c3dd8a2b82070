"""Captioner: cached decoding vs the teacher-forced forward, decoding library use, errors;
and the per-row KV cache of MultiHeadAttention against a naive numpy attention."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import decoding
from mmjax.models.captioner import Captioner
from mmjax.nn.attention import MultiHeadAttention

EOS = 2
MAX_LENGTH = 12
# Small programs on a shared CPU: skipping XLA's backend optimisations halves compile time.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def setup():
  model = Captioner(vocab_size=23, max_length=MAX_LENGTH, patch_size=8, vision_width=24,
                    vision_layers=1, vision_heads=2, text_width=32, text_layers=2, text_heads=4)
  images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 3, 23)
  params = fast_jit(model.init)(jax.random.key(2), images, tokens)["params"]
  return model, params, images, tokens


def naive_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d)) v per head in float64; q [B,T,H,D], mask [B,T,S]."""
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def test_attention_per_row_cache_matches_naive_masked_attention():
  """Ragged prompts: garbage written past a row's prompt is masked, then overwritten."""
  batch, length, dim, heads = 2, 6, 16, 4
  x = np.asarray(jax.random.normal(jax.random.key(0), (batch, length, dim)), np.float64)
  module = MultiHeadAttention(num_heads=heads, decode=True)
  init_pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
  variables = module.init(jax.random.key(1), jnp.zeros((batch, length, dim)), positions=init_pos)
  params, cache = variables["params"], variables["cache"]
  assert "cache_index" not in cache  # per-row mode: every leaf is batch-first
  assert all(leaf.shape[0] == batch for leaf in jax.tree.leaves(cache))

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn_unbox(params))
  qkv = np.einsum("btd,dshk->btshk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
  causal = np.broadcast_to(np.tril(np.ones((length, length), bool)), (batch, length, length))
  heads_out = naive_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal)
  expected = np.einsum("bthk,hkd->btd", heads_out, p["out"]["kernel"]) + p["out"]["bias"]

  step = fast_jit(lambda c, xs, pos: module.apply({"params": params, "cache": c}, xs,
                                                   positions=pos, mutable=["cache"]))
  prompt_len, lengths = 3, np.array([1, 3])
  prompt = x[:, :prompt_len].copy()
  prompt[0, 1:] = 100.0  # padding of row 0's prompt: its K/V must never be seen
  out, variables = step(cache, jnp.asarray(prompt, jnp.float32),
                        jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len)))
  cache = variables["cache"]
  for b in range(batch):
    np.testing.assert_allclose(out[b, :lengths[b]], expected[b, :lengths[b]], atol=1e-5)
  for t in range(length - lengths.max()):
    pos = lengths + t
    xs = x[np.arange(batch), pos][:, None]
    out, variables = step(cache, jnp.asarray(xs, jnp.float32), jnp.asarray(pos[:, None]))
    cache = variables["cache"]
    np.testing.assert_allclose(out[:, 0], expected[np.arange(batch), pos], atol=1e-5)


def nn_unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def test_attention_positions_need_decode_mode():
  x = jnp.ones((1, 3, 8))
  module = MultiHeadAttention(num_heads=2)
  with pytest.raises(ValueError, match="decode=True"):
    module.init(jax.random.key(0), x, positions=jnp.zeros((1, 3), jnp.int32))
  with pytest.raises(ValueError, match="positions must be"):
    MultiHeadAttention(num_heads=2, decode=True).init(jax.random.key(0), x,
                                                      positions=jnp.zeros((1, 2), jnp.int32))


def test_cached_decoding_matches_teacher_forcing_with_ragged_prompts(setup):
  model, params, images, tokens = setup
  full = np.asarray(fast_jit(model.apply)({"params": params}, images, tokens))
  batch, length = tokens.shape
  prompt_len, lengths = 5, np.array([2, 5, 3])
  prompt = np.asarray(tokens[:, :prompt_len]).copy()
  prompt[np.arange(prompt_len)[None, :] >= lengths[:, None]] = 0  # right padding

  step = fast_jit(functools.partial(model.decode_step, params))
  cache = model.init_cache(params, images, length)
  cross_keys = [path for path, _ in jax.tree_util.tree_leaves_with_path(cache.kv)
                if "['cross_kv'].key" in jax.tree_util.keystr(path)]
  assert len(cross_keys) == model.text_layers
  # The steps read the image only through the cross-attention K/V projected by init_cache:
  # zeroing the cache's image tokens changes nothing.
  cache = cache._replace(image_tokens=jnp.zeros_like(cache.image_tokens))
  logits, cache = step(jnp.asarray(prompt), cache,
                       jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len)))
  for b in range(batch):
    np.testing.assert_allclose(logits[b, :lengths[b]], full[b, :lengths[b]], atol=1e-5)
  for t in range(length - lengths.max()):
    pos = lengths + t
    logits, cache = step(tokens[np.arange(batch), pos][:, None], cache,
                         jnp.asarray(pos[:, None], jnp.int32))
    np.testing.assert_allclose(logits[:, 0], full[np.arange(batch), pos], atol=1e-5)


def test_greedy_and_beam_search_with_the_cache(setup):
  """Greedy equals greedy over recompute_step_fn; beam 1 is greedy; beam 2 scores are exact."""
  model, params, images, tokens = setup
  # Larger logits than the 0.02-scale init gives, so argmax decisions are not near-ties.
  params = jax.tree.map(lambda p: p * 2.0, params)
  prompt = jnp.asarray(np.where(np.arange(3)[None] < np.array([[1], [3], [2]]), tokens[:, :3], 0))
  prompt_lengths = jnp.array([1, 3, 2])
  new_tokens = 6
  max_length = 3 + new_tokens

  def forward(buffer, images):
    return model.apply({"params": params}, images, buffer)

  @fast_jit
  def run(params, images):
    cached = functools.partial(model.decode_step, params)
    recompute = decoding.recompute_step_fn(forward)
    kwargs = dict(max_new_tokens=new_tokens, eos_id=EOS)
    cache = model.init_cache(params, images, max_length)
    buffer = decoding.init_recompute_cache(3, max_length, context=images)
    return dict(
        greedy=decoding.greedy(cached, cache, prompt, prompt_lengths, **kwargs),
        greedy_ref=decoding.greedy(recompute, buffer, prompt, prompt_lengths, **kwargs),
        beam1=decoding.beam_search(cached, cache, prompt, prompt_lengths, num_beams=1,
                                   length_penalty=0.0, **kwargs),
        beam2=decoding.beam_search(cached, cache, prompt, prompt_lengths, num_beams=2,
                                   length_penalty=0.0, **kwargs))

  out = run(params, images)
  np.testing.assert_array_equal(out["greedy"].tokens, out["greedy_ref"].tokens)
  np.testing.assert_array_equal(out["greedy"].lengths, out["greedy_ref"].lengths)
  np.testing.assert_allclose(out["greedy"].scores, out["greedy_ref"].scores, atol=1e-4)
  # One beam is greedy.
  np.testing.assert_array_equal(out["beam1"].tokens[:, 0], out["greedy"].tokens)
  # Two beams: each returned caption's score (length_penalty=0: its summed log-probability)
  # equals a teacher-forced rescoring of that caption.
  beam_tokens = np.asarray(out["beam2"].tokens[:, 0])
  beam_lengths = np.asarray(out["beam2"].lengths[:, 0])
  assert beam_tokens.shape == (3, new_tokens)
  sequences = np.zeros((3, max_length), np.int32)
  for b in range(3):
    row = list(np.asarray(prompt[b, :prompt_lengths[b]])) + list(beam_tokens[b, :beam_lengths[b]])
    sequences[b, :len(row)] = row
  log_probs = jax.nn.log_softmax(fast_jit(model.apply)({"params": params}, images, sequences), -1)
  expected = [sum(float(log_probs[b, t - 1, sequences[b, t]])
                  for t in range(int(prompt_lengths[b]), int(prompt_lengths[b] + beam_lengths[b])))
              for b in range(3)]
  np.testing.assert_allclose(out["beam2"].scores[:, 0], expected, atol=1e-4)


def test_bad_inputs_raise_clear_errors(setup):
  model, params, images, tokens = setup
  with pytest.raises(ValueError, match="images must be"):
    model.apply({"params": params}, images[0], tokens)
  long_tokens = jnp.zeros((3, MAX_LENGTH + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_length"):
    model.apply({"params": params}, images, long_tokens)
  with pytest.raises(ValueError, match="max_length"):
    model.init_cache(params, images, MAX_LENGTH + 1)
  with pytest.raises(ValueError, match="same batch size"):
    model.apply({"params": params}, images[:2], tokens)
  cache = model.init_cache(params, images, 8)
  with pytest.raises(ValueError, match="positions"):
    model.decode_step(params, tokens[:, :2], cache, jnp.zeros((3, 1), jnp.int32))
