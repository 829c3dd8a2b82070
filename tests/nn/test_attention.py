"""The one attention against a naive numpy formula, its kernels, masks and KV cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import MultiHeadAttention, dot_product_attention, make_causal_mask
from mmjax.nn.transformer import Transformer


def naive_attention(q, k, v, mask=None):
  """Per-head softmax(q k^T / sqrt(d)) v in float64 numpy; q [B,T,H,D]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(np.asarray(mask), logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("implementation", ["einsum", "xla"])
def test_kernel_matches_naive_with_mask(implementation):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 5, 3, 8)).astype(np.float32) for _ in range(3))
  mask = rng.random((2, 1, 5, 5)) > 0.3
  mask[..., 0] = True  # every query sees at least one key
  out = dot_product_attention(q, k, v, mask, implementation=implementation)
  np.testing.assert_allclose(out, naive_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_module_self_attention_matches_manual_projection():
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  module = MultiHeadAttention(num_heads=4)
  params = module.init(jax.random.key(1), x)["params"]
  p = jax.tree.map(np.asarray, params)
  qkv = np.einsum("btd,dshk->btshk", x, p["qkv"]["kernel"].value) + p["qkv"]["bias"].value
  heads = naive_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], make_causal_mask(6))
  expected = np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"].value) + p["out"]["bias"].value
  out = module.apply({"params": params}, x, causal=True)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_cross_attention_shapes_and_mask():
  q = jax.random.normal(jax.random.key(0), (2, 3, 16))
  ctx = jax.random.normal(jax.random.key(1), (2, 7, 12))
  module = MultiHeadAttention(num_heads=2)
  params = module.init(jax.random.key(2), q, ctx)
  assert module.apply(params, q, ctx).shape == (2, 3, 16)
  # Masking out the last 4 context tokens equals dropping them.
  mask = (jnp.arange(7) < 3)[None, None, None, :]
  np.testing.assert_allclose(module.apply(params, q, ctx, mask=mask),
                             module.apply(params, q, ctx[:, :3]), rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_matches_full_forward():
  """Feeding tokens one (or several) at a time through the cache equals the causal forward."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 32))
  full = Transformer(num_layers=2, num_heads=4, mlp_dim=64)
  params = full.init(jax.random.key(1), x, causal=True)["params"]
  expected = full.apply({"params": params}, x, causal=True)

  decoder = Transformer(num_layers=2, num_heads=4, mlp_dim=64, decode=True)
  cache = decoder.init(jax.random.key(1), jnp.zeros_like(x))["cache"]
  step = jax.jit(lambda c, xs: decoder.apply({"params": params, "cache": c}, xs, mutable=["cache"]))
  outs = []
  for start, stop in ((0, 3), (3, 4), (4, 5), (5, 8)):  # a prompt, then single tokens, then a chunk
    out, variables = step(cache, x[:, start:stop])
    cache = variables["cache"]
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), expected, rtol=1e-4, atol=1e-5)


def test_cross_attention_cache_projects_the_context_once():
  """decode=True cross-attention stores K/V on the cache-creating call and then never reads
  `inputs_kv` again: later calls with another context give the first context's output."""
  q = jax.random.normal(jax.random.key(0), (2, 3, 16))
  ctx = jax.random.normal(jax.random.key(1), (2, 7, 12))
  params = MultiHeadAttention(num_heads=2).init(jax.random.key(2), q, ctx)["params"]
  expected = MultiHeadAttention(num_heads=2).apply({"params": params}, q, ctx)
  decoder = MultiHeadAttention(num_heads=2, decode=True)
  out, variables = decoder.apply({"params": params}, q, ctx, mutable=["cache"])
  cache = variables["cache"]
  assert cache["cached_cross_key"].shape == (2, 7, 2, 8)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  for start in range(3):  # one query token at a time, against the cached context
    step, _ = decoder.apply({"params": params, "cache": cache}, q[:, start:start + 1],
                            jnp.zeros_like(ctx), mutable=["cache"])
    np.testing.assert_allclose(step, expected[:, start:start + 1], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  x = jnp.ones((1, 4, 16), jnp.bfloat16)
  module = MultiHeadAttention(num_heads=2, dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert module.apply(variables, x).dtype == jnp.bfloat16


def test_bad_widths_raise():
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    MultiHeadAttention(num_heads=3).init(jax.random.key(0), jnp.ones((1, 2, 16)))
