"""The DiT denoiser and the adaLN-Zero transformer block against numpy transcriptions."""
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.nn.dit import DiT, sincos_2d_positions
from mmjax.nn.transformer import TransformerBlock
from mmjax.train import sharding


# -- numpy transcription ------------------------------------------------------------------------

def np_layer_norm(x, eps, scale=None, bias=None):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + eps)
  return y if scale is None else y * scale + bias


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_silu(x):
  return x / (1 + np.exp(-x))


def np_attention(p, x_q, x_kv, heads, key_valid=None):
  """Multi-head attention with mmjax's parameter layout (qkv / query+kv, out), float64."""
  if x_kv is None:
    qkv = np.einsum("btd,dkhe->btkhe", x_q, p["qkv"]["kernel"]) + p["qkv"]["bias"]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  else:
    q = np.einsum("btd,dhe->bthe", x_q, p["query"]["kernel"]) + p["query"]["bias"]
    kv = np.einsum("bsd,dkhe->bskhe", x_kv, p["kv"]["kernel"]) + p["kv"]["bias"]
    k, v = kv[:, :, 0], kv[:, :, 1]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if key_valid is not None:
    logits = np.where(key_valid[:, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", w, v)
  return np.einsum("bqhd,hde->bqe", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_dense(p, x):
  return x @ p["kernel"] + p["bias"]


def np_adaln_block(p, x, condition, heads, context=None, key_valid=None):
  """x + g1 * SelfAttn(LN(x)(1+s1)+b1) [+ CrossAttn(LN_affine(x), ctx)] + g2 * MLP(...)."""
  mod = np_dense(p["adaln_modulation"], np_silu(condition))
  b1, s1, g1, b2, s2, g2 = np.split(mod, 6, axis=-1)
  h = np_layer_norm(x, 1e-6) * (1 + s1[:, None]) + b1[:, None]
  x = x + g1[:, None] * np_attention(p["self_attn"], h, None, heads)
  if context is not None:
    h = np_layer_norm(x, 1e-6, p["ln_cross"]["scale"], p["ln_cross"]["bias"])
    x = x + np_attention(p["cross_attn"], h, context, heads, key_valid)
  h = np_layer_norm(x, 1e-6) * (1 + s2[:, None]) + b2[:, None]
  mlp = np_dense(p["mlp"]["fc2"], np_gelu_tanh(np_dense(p["mlp"]["fc1"], h)))
  return x + g2[:, None] * mlp


def np_timestep_embedding(t, dim, scale=1000.0):
  half = dim // 2
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
  args = (t * scale)[:, None] * freqs[None]
  return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def np_positions(rows, cols, dim):
  """Loop transcription of the 2-D sin-cos table: [row sin, row cos, col sin, col cos]."""
  quarter = dim // 4
  table = np.zeros((rows * cols, dim))
  for r in range(rows):
    for c in range(cols):
      for k in range(quarter):
        w = 10000.0 ** (-k / quarter)
        table[r * cols + c, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = [
            math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)]
  return table


def np_dit(p, x, t, context, key_valid, *, patch, heads, layers, frequency_dim):
  """The whole DiT forward (patchify by loops, blocks, modulated final layer, unpatchify)."""
  batch, height, width, channels = x.shape
  rows, cols = height // patch, width // patch
  patches = np.zeros((batch, rows * cols, patch * patch * channels))
  for r in range(rows):
    for c in range(cols):
      block = x[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch, :]
      patches[:, r * cols + c] = block.reshape(batch, -1)
  width_d = p["patch_embed"]["kernel"].shape[1]
  tokens = np_dense(p["patch_embed"], patches) + np_positions(rows, cols, width_d)
  temb = np_timestep_embedding(t, frequency_dim)
  condition = np_dense(p["time_fc2"], np_silu(np_dense(p["time_fc1"], temb)))
  weights = key_valid[..., None].astype(np.float64)
  pooled = (context * weights).sum(1) / weights.sum(1)
  condition = condition + np_dense(p["pooled_text"], pooled)
  for i in range(layers):
    tokens = np_adaln_block(p["transformer"][f"block_{i}"], tokens, condition, heads, context,
                            key_valid)
  shift, scale = np.split(np_dense(p["final_modulation"], np_silu(condition)), 2, axis=-1)
  h = np_layer_norm(tokens, 1e-6) * (1 + scale[:, None]) + shift[:, None]
  h = np_dense(p["final_proj"], h)
  out = np.zeros((batch, height, width, h.shape[-1] // (patch * patch)))
  for r in range(rows):
    for c in range(cols):
      out[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch, :] = h[:, r * cols + c].reshape(
          batch, patch, patch, -1)
  return out


def randomise(params, seed, std=0.3):
  """Every parameter (zero-initialised ones included) replaced by N(0, std^2), unboxed."""
  leaves, treedef = jax.tree.flatten(flax.linen.meta.unbox(params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [std * jax.random.normal(k, l.shape, l.dtype)
                                      for k, l in zip(keys, leaves)])


def as_numpy(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), flax.core.unfreeze(tree))


# -- tests --------------------------------------------------------------------------------------

def test_adaln_block_matches_numpy_on_random_weights():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  condition = rng.normal(size=(2, 12)).astype(np.float32)
  context = rng.normal(size=(2, 5, 8)).astype(np.float32)
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  block = TransformerBlock(num_heads=4, mlp_dim=32, cross_attention=True, adaptive_norm=True)
  params = block.init(jax.random.key(0), x, context, context_mask=valid[:, None, None, :],
                      condition=condition)["params"]
  params = randomise(params, 1)
  out = jax.jit(block.apply)({"params": params}, x, context, context_mask=valid[:, None, None, :],
                             condition=condition)
  expected = np_adaln_block(as_numpy(params), x.astype(np.float64), condition.astype(np.float64),
                            4, context.astype(np.float64), valid)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_adaln_block_starts_as_identity_and_needs_its_condition():
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  condition = jax.random.normal(jax.random.key(1), (2, 12))
  block = TransformerBlock(num_heads=4, mlp_dim=32, adaptive_norm=True)
  params = block.init(jax.random.key(2), x, condition=condition)
  np.testing.assert_array_equal(block.apply(params, x, condition=condition), x)
  with pytest.raises(ValueError, match="needs condition"):
    block.apply(params, x)
  with pytest.raises(ValueError, match="adaptive_norm=False"):
    TransformerBlock(num_heads=4, mlp_dim=32).init(jax.random.key(0), x, condition=condition)


def _tiny_dit(**overrides):
  fields = dict(patch_size=2, width=16, num_layers=2, num_heads=2, mlp_ratio=2.0,
                context_dim=8, frequency_dim=8)
  fields.update(overrides)
  return DiT(**fields)


def _inputs(batch=2, size=8, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
  t = rng.uniform(size=(batch,)).astype(np.float32)
  context = rng.normal(size=(batch, 5, 8)).astype(np.float32)
  valid = np.ones((batch, 5), bool)
  valid[0, 3:] = False
  return x, t, context, valid


def test_dit_is_exactly_zero_at_init():
  dit = _tiny_dit(out_channels=4)
  x, t, context, valid = _inputs()
  params = dit.init(jax.random.key(0), x, t, context, valid)
  out = dit.apply(params, x, t, context, valid)
  assert out.shape == (2, 8, 8, 4) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, 0.0)


def test_dit_forward_matches_numpy_on_random_weights():
  dit = _tiny_dit()
  x, t, context, valid = _inputs(size=6)  # 3 x 3 patches: rows and columns differ
  params = randomise(dit.init(jax.random.key(0), x, t, context, valid)["params"], 3, std=0.2)
  out = jax.jit(dit.apply)({"params": params}, x, t, context, valid)
  expected = np_dit(as_numpy(params), x.astype(np.float64), t.astype(np.float64),
                    context.astype(np.float64), valid, patch=2, heads=2, layers=2,
                    frequency_dim=8)
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


def test_sincos_positions_match_loop_transcription():
  np.testing.assert_allclose(sincos_2d_positions(3, 5, 16), np_positions(3, 5, 16), atol=1e-6)


def test_dit_overfits_one_batch():
  dit = _tiny_dit(width=32)
  x, t, context, valid = _inputs(batch=4, seed=1)
  target = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  params = dit.init(jax.random.key(0), x, t, context, valid)["params"]
  optimizer = optax.adam(3e-3)

  def loss_fn(p):
    return jnp.mean((dit.apply({"params": p}, x, t, context, valid) - target) ** 2)

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  state = optimizer.init(params)
  first = float(loss_fn(params))
  for _ in range(100):
    params, state, loss = step(params, state)
  # A zero output gives the target's mean square (~1); memorising 4 examples drives it down.
  assert first == pytest.approx(float(np.mean(target ** 2)), rel=1e-6)
  assert float(loss) < 0.2 * first


def test_sharded_dit_loss_equals_single_device():
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 CPU devices"
  dit = _tiny_dit(width=32, num_heads=4, num_layers=1)
  x, t, context, valid = _inputs(batch=8, seed=4)
  params = randomise(dit.init(jax.random.key(0), x, t, context, valid)["params"], 5, std=0.1)

  def loss(p, x, t, context, valid):
    return jnp.mean((dit.apply({"params": p}, x, t, context, valid) - x) ** 2)

  single = float(jax.jit(loss)(params, x, t, context, valid))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  boxed = dit.init(jax.random.key(0), x, t, context, valid)["params"]
  shardings = sharding.logical_shardings(boxed, mesh)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  assert any("tensor" in jax.tree.leaves(tuple(s)) for s in specs)
  assert any("fsdp" in jax.tree.leaves(tuple(s)) for s in specs)
  placed = jax.device_put(params, shardings)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  inputs = [jax.device_put(a, batch) for a in (x, t, context, valid)]
  sharded = float(jax.jit(loss)(placed, *inputs))
  assert sharded == pytest.approx(single, rel=1e-5)


@pytest.mark.parametrize("fields, size, match", [
    (dict(patch_size=3), 8, "patch_size=3 must divide the input size 8x8"),
    (dict(position_embedding="rope"), 8, "position_embedding must be one of"),
    (dict(width=18, num_heads=4), 8, "width=18 must be divisible by num_heads=4"),
])
def test_dit_rejects_bad_config(fields, size, match):
  x, t, context, valid = _inputs(size=size)
  with pytest.raises(ValueError, match=match):
    _tiny_dit(**fields).init(jax.random.key(0), x, t, context, valid)


def test_dit_learned_positions_and_super_resolution_inputs():
  dit = _tiny_dit(position_embedding="learned", low_res_channels=3, aug_level_embedding=True)
  x, t, context, valid = _inputs()
  low_res = np.zeros((2, 4, 4, 3), np.float32)
  params = flax.linen.meta.unbox(
      dit.init(jax.random.key(0), x, t, context, valid, low_res=low_res, aug_level=0.1))
  assert params["params"]["positions"].shape == (16, 16)
  assert params["params"]["patch_embed"]["kernel"].shape == (2 * 2 * 6, 16)  # x_t + low_res
  assert "aug_fc1" in params["params"]
  with pytest.raises(ValueError, match="needs low_res"):
    dit.apply(params, x, t, context, valid, aug_level=0.1)
