"""The one attention against a naive numpy formula, its kernels, masks and KV cache; the
transformer block against a numpy transcription."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.attention import MultiHeadAttention, dot_product_attention, make_causal_mask
from mmjax.nn.kv_cache import SlotKVCache
from mmjax.nn.transformer import Transformer, TransformerBlock


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


def test_per_row_cache_writes_each_rows_keys_at_its_slot():
  """decode=True with `positions`: row b's key/value projections land at slot positions[b] of
  its row of the `SlotKVCache` (other slots untouched), and the query attends to slots
  <= positions[b] of its own row, as a numpy projection and attention say."""
  x = jax.random.normal(jax.random.key(0), (2, 1, 16))
  module = MultiHeadAttention(num_heads=4)
  params = module.init(jax.random.key(1), x)["params"]
  p = jax.tree.map(np.asarray, params)
  decoder = MultiHeadAttention(num_heads=4, decode=True)
  slots = 6
  cache = decoder.init(jax.random.key(1), jnp.zeros((2, slots, 16)),
                       positions=jnp.zeros((2, slots), jnp.int32))["cache"]
  assert isinstance(cache["kv"], SlotKVCache) and cache["kv"].num_slots == slots
  old = np.asarray(jax.random.normal(jax.random.key(2), (2, 4, slots, 4)))  # [B, H, S, Dh]
  cache = {"kv": SlotKVCache.from_rows(jnp.asarray(old), jnp.asarray(2.0 * old), group=1)}
  positions = np.array([[2], [5]], np.int32)
  out, variables = decoder.apply({"params": params, "cache": cache}, x,
                                 positions=jnp.asarray(positions), mutable=["cache"])
  qkv = np.einsum("btd,dshk->btshk", x, p["qkv"]["kernel"].value) + p["qkv"]["bias"].value
  stored = variables["cache"]["kv"].rows()
  for got, part, scale in ((stored[0], 1, 1.0), (stored[1], 2, 2.0)):
    expected = scale * old
    for b in range(2):
      expected[b, :, positions[b, 0]] = qkv[b, 0, part]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  stored_k, stored_v = (np.swapaxes(np.asarray(a), 1, 2) for a in stored)
  mask = (np.arange(slots)[None, :] <= positions)[:, None, None, :]  # [B, 1, Tq, S]
  heads = naive_attention(qkv[:, :, 0], stored_k, stored_v, mask)
  expected_out = np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"].value) + p["out"]["bias"].value
  np.testing.assert_allclose(out, expected_out, rtol=1e-4, atol=1e-5)


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
  assert cache["cross_kv"].key.shape == (2, 2, 8, 7)  # [B, H, Dh, Tk]
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


# -- TransformerBlock ---------------------------------------------------------------------------

# The parameter tree of a plain pre-LN block with cross-attention (width 8, 2 heads, context
# width 6, MLP 12), as it was before blocks could hold a decoder attention: checkpoints of
# every model built on TransformerBlock depend on these names and shapes.
PLAIN_BLOCK_TREE = {
    "ln_attn": {"bias": (8,), "scale": (8,)},
    "self_attn": {"qkv": {"kernel": (8, 3, 2, 4), "bias": (3, 2, 4)},
                  "out": {"kernel": (2, 4, 8), "bias": (8,)}},
    "ln_cross": {"bias": (8,), "scale": (8,)},
    "cross_attn": {"query": {"kernel": (8, 2, 4), "bias": (2, 4)},
                   "kv": {"kernel": (6, 2, 2, 4), "bias": (2, 2, 4)},
                   "out": {"kernel": (2, 4, 8), "bias": (8,)}},
    "ln_mlp": {"bias": (8,), "scale": (8,)},
    "mlp": {"fc1": {"kernel": (8, 12), "bias": (12,)}, "fc2": {"kernel": (12, 8), "bias": (8,)}},
}


def _random_params(params, seed):
  """Every leaf replaced by N(0, 0.5) (non-trivial LayerNorm scales and biases too)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: (0.5 * rng.normal(size=leaf.shape)).astype(np.float32),
                      nn_unbox(params))


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.meta.unbox(tree)


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _self_attention(x, p, mask):
  qkv = np.einsum("btd,dshk->btshk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
  heads = naive_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
  return np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def _cross_attention(x, context, p):
  q = np.einsum("btd,dhk->bthk", x, p["query"]["kernel"]) + p["query"]["bias"]
  kv = np.einsum("bsd,dzhk->bszhk", context, p["kv"]["kernel"]) + p["kv"]["bias"]
  heads = naive_attention(q, kv[:, :, 0], kv[:, :, 1])
  return np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def naive_block(x, context, p, mask, self_attn="self_attn", ln="ln_attn"):
  """Pre-LN block in float64 numpy: x + SA(LN x) [+ CA(LN x, context)] + MLP(LN x), tanh GELU."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64)
  x = x + _self_attention(_layer_norm(x, p[ln]), p[self_attn], mask)
  if context is not None:
    x = x + _cross_attention(_layer_norm(x, p["ln_cross"]), np.asarray(context, np.float64),
                             p["cross_attn"])
  h = _layer_norm(x, p["ln_mlp"]) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
  h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  return x + h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


def _block_inputs():
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  context = jax.random.normal(jax.random.key(1), (2, 4, 6))
  valid = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
  padding = jnp.broadcast_to(valid[:, None, None, :], (2, 1, 5, 5))  # keys 3, 4 of row 1 hidden
  return x, context, padding


def test_plain_block_parameter_tree_and_output_match_a_numpy_block():
  x, context, padding = _block_inputs()
  block = TransformerBlock(num_heads=2, mlp_dim=12, cross_attention=True)
  params = jax.eval_shape(block.init, jax.random.key(2), x, context)["params"]
  assert jax.tree.map(lambda a: a.shape, nn_unbox(params)) == PLAIN_BLOCK_TREE
  params = _random_params(params, 3)
  apply = jax.jit(lambda *a, **k: block.apply({"params": params}, *a, **k),
                  static_argnames="causal")
  out = apply(x, context, padding)
  np.testing.assert_allclose(out, naive_block(x, context, params, padding), atol=1e-4)
  causal = apply(x, context, causal=True)
  np.testing.assert_allclose(causal, naive_block(x, context, params, make_causal_mask(5)),
                             atol=1e-4)


def test_decoder_attention_replaces_only_the_self_attention():
  """A block with `decoder_attention`: decoder=False is the plain block on "self_attn",
  decoder=True the same block with the causal "causal_self_attn" in its place (same
  cross-attention and MLP); without context (context_optional) cross-attention is skipped."""
  x, context, padding = _block_inputs()
  block = TransformerBlock(num_heads=2, mlp_dim=12, cross_attention=True,
                           decoder_attention="causal_self_attn", context_optional=True)
  both_modes = lambda m, x, c: (m(x, c), m(x, c, decoder=True))
  params = jax.eval_shape(functools.partial(block.init, method=both_modes), jax.random.key(2), x,
                          context)["params"]
  assert set(params) == set(PLAIN_BLOCK_TREE) | {"causal_self_attn", "ln_causal_self_attn"}
  params = _random_params(params, 4)
  apply = jax.jit(lambda *a, **k: block.apply({"params": params}, *a, **k),
                  static_argnames="decoder")
  np.testing.assert_allclose(apply(x, context, padding),
                             naive_block(x, context, params, padding), atol=1e-4)
  np.testing.assert_allclose(apply(x, context, decoder=True),
                             naive_block(x, context, params, make_causal_mask(5),
                                         "causal_self_attn", "ln_causal_self_attn"), atol=1e-4)
  np.testing.assert_allclose(apply(x, None, padding), naive_block(x, None, params, padding),
                             atol=1e-4)


def test_block_options_refuse_bad_use():
  x, context, _ = _block_inputs()
  init = lambda block, *args, **kw: jax.eval_shape(
      functools.partial(block.init, **kw), jax.random.key(0), *args)
  with pytest.raises(ValueError, match="decoder=True needs a block built with decoder_attention"):
    init(TransformerBlock(num_heads=2, mlp_dim=12), x, decoder=True)
  with pytest.raises(ValueError, match="would clash with the block's own sub-layers"):
    init(TransformerBlock(num_heads=2, mlp_dim=12, decoder_attention="attn"), x)
  with pytest.raises(ValueError, match="called without context"):
    init(TransformerBlock(num_heads=2, mlp_dim=12, cross_attention=True), x)
