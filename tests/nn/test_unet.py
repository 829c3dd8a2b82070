"""The text-conditioned UNet: zero init, conditioning, masks, batch independence, bf16, sharding.

Compiling the UNet dominates the run time on CPU, so one small model is initialised once per
module and every forward pass at a given shape goes through one shared jitted `apply`.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import diffusion
from mmjax.nn.unet import UNet, timestep_embedding
from mmjax.train import sharding

# Attention only in the middle block keeps compile times down; the SR test below traces a
# config with attention at every level.
CONFIG = dict(channels=(16, 32), num_res_blocks=1, attention_levels=(), mid_attention=True,
              num_heads=2, context_dim=12, num_groups=8)
MODEL = UNet(**CONFIG)
B, H, W, C, L = 2, 16, 16, 4, 5


def _inputs(seed=0, batch=B):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (batch, H, W, C))
  t = jax.random.uniform(keys[1], (batch,))
  context = jax.random.normal(keys[2], (batch, L, CONFIG["context_dim"]))
  return x, t, context


# Compilation, not computation, is the cost here: the RBG generator compiles far faster than
# threefry for a 200-leaf init, and LLVM optimisation level 0 halves XLA:CPU compile times
# (it changes code generation, not the HLO computed).
_INIT_KEY = functools.partial(jax.random.key, impl="unsafe_rbg")
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def boxed_params():
  """Freshly initialised params, still wrapped in `nn.LogicallyPartitioned`."""
  return jit(MODEL.init)(_INIT_KEY(0), *_inputs())["params"]


@pytest.fixture(scope="module")
def init_params(boxed_params):
  return nn.unbox(boxed_params)


@pytest.fixture(scope="module")
def params(init_params):
  """Init params plus host-side noise, so the zero-initialised layers are live."""
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda p: np.asarray(p) + 0.2 * rng.standard_normal(p.shape).astype(np.float32), init_params)


apply = jit(lambda p, *args, **kw: MODEL.apply({"params": p}, *args, **kw))


def test_timestep_embedding_matches_formula():
  t = np.array([0.0, 0.25, 1.0], np.float32)
  emb = np.asarray(timestep_embedding(t, 8, scale=1000.0))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  expected = np.concatenate([np.cos(1000 * t[:, None] * freqs), np.sin(1000 * t[:, None] * freqs)],
                            axis=1)
  np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-4)


def test_fresh_unet_outputs_exactly_zero(init_params):
  out = apply(init_params, *_inputs())
  assert out.shape == (B, H, W, C) and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0.0)


def test_output_depends_on_time_and_context(params):
  x, t, context = _inputs()
  out = np.asarray(apply(params, x, t, context))
  assert np.all(np.isfinite(out)) and np.std(out) > 1e-3
  other_t = np.asarray(apply(params, x, 1.0 - t, context))
  other_context = np.asarray(apply(params, x, t, context[::-1]))
  for other in (other_t, other_context):
    assert np.max(np.abs(other - out)) > 1e-3 * np.max(np.abs(out))
  np.testing.assert_array_equal(np.asarray(apply(params, x, t, context)), out)  # deterministic


def test_masked_tokens_equal_dropped_tokens_and_rows_are_independent(params):
  """Row 1 masks its last context tokens (which hold junk); row 0 masks none.

  Row 1 of the batch must equal row 1 run alone with those tokens dropped (mask == drop, and
  no information flows between batch rows); row 0 must equal the unmasked forward.
  """
  x, t, context = _inputs()
  keep = 3
  mask = jnp.stack([jnp.ones((L,), bool), jnp.arange(L) < keep])
  junk = context.at[1, keep:].set(100.0)
  masked = np.asarray(apply(params, x, t, junk, mask))
  alone_dropped = np.asarray(apply(params, x[1:], t[1:], context[1:, :keep]))
  np.testing.assert_allclose(masked[1:], alone_dropped, rtol=1e-4, atol=1e-4,
                             err_msg="masked row != that row alone with the tokens dropped")
  np.testing.assert_allclose(masked[0], np.asarray(apply(params, x, t, context))[0], rtol=1e-4,
                             atol=1e-4, err_msg="an all-True mask changed the output")


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32(params):
  x, t, context = _inputs()
  bf16 = UNet(**CONFIG, dtype=jnp.bfloat16)
  abstract = jax.eval_shape(bf16.init, jax.random.key(0), x, t, context)["params"]
  assert {leaf.dtype for leaf in jax.tree.leaves(nn.unbox(abstract))} == {jnp.dtype(jnp.float32)}
  out16 = np.asarray(jit(bf16.apply)({"params": params}, x, t, context))
  out32 = np.asarray(apply(params, x, t, context))
  assert out16.dtype == np.float32 and np.all(np.isfinite(out16))
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert rel < 0.05, f"bf16 output differs from fp32 by {rel:.3f} (relative L2)"


def test_params_are_logically_partitioned_and_shard_over_a_mesh(boxed_params, params):
  leaves = jax.tree.leaves(boxed_params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  unnamed = [leaf for leaf in leaves if not isinstance(leaf, nn.LogicallyPartitioned)]
  assert not unnamed, f"{len(unnamed)} params lack logical axis names"

  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  param_shardings = sharding.logical_shardings(boxed_params, mesh)
  qkv = param_shardings["mid_attn"]["block_0"]["self_attn"]["qkv"]["kernel"]
  assert tuple(qkv.spec) == ("fsdp", None, None, None)  # 2 heads: tensor=4 does not divide
  conv = param_shardings["mid_res_0"]["conv1"]["kernel"]
  assert tuple(conv.spec) == (None, None, "fsdp", None)

  x, t, context = _inputs()
  batch = sharding.batch_sharding(mesh)
  sharded_params = jax.device_put(params, param_shardings)
  run = jit(lambda p, *a: MODEL.apply({"params": p}, *a),
                in_shardings=(param_shardings, batch, batch, batch), out_shardings=batch)
  out = run(sharded_params, *(jax.device_put(a, batch) for a in (x, t, context)))
  np.testing.assert_allclose(out, apply(params, x, t, context), rtol=1e-4, atol=1e-4)


def test_adam_lowers_denoising_loss(init_params):
  schedule = diffusion.linear_schedule()
  keys = jax.random.split(jax.random.key(3), 2)
  x0 = jnp.tanh(jax.random.normal(keys[0], (B, H, W, C)))
  noise = jax.random.normal(keys[1], (B, H, W, C))
  _, _, context = _inputs()
  t = jnp.array([0.3, 0.7])
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  optimizer = optax.adam(3e-3)

  @jit
  def step(p, opt_state):
    loss, grads = jax.value_and_grad(
        lambda q: jnp.mean(jnp.square(MODEL.apply({"params": q}, x_t, t, context) - noise)))(p)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  p, opt_state = init_params, jit(optimizer.init)(init_params)  # one compile, not one per leaf
  losses = []
  for _ in range(4):
    p, opt_state, loss = step(p, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("kwargs, inputs, match", [
    ({}, dict(x=jnp.zeros((1, 15, 16, 4))), "divisible by"),
    ({}, dict(x=jnp.zeros((16, 16, 4))), r"\[B, H, W, C\]"),
    ({}, dict(context=None), "needs context"),
    ({}, dict(context=jnp.zeros((1, 5, 7))), "context_dim=12"),
    ({}, dict(context_mask=jnp.ones((1, 4), bool)), "context_mask"),
    ({}, dict(t=jnp.zeros((3,))), "t must be"),
    ({"context_dim": None}, {}, "no cross-attention"),
    ({"attention_levels": (2,)}, {}, "outside 0..1"),
    ({"low_res_channels": 3}, dict(low_res=jnp.zeros((1, 8, 8, 2))), "low_res must be"),
    ({"aug_level_embedding": True}, dict(aug_level=jnp.zeros((2,))), "aug_level must be"),
    ({"num_groups": 5}, {}, "num_groups=5"),
    ({"low_res_channels": 3}, {}, "needs low_res"),
    ({}, dict(low_res=jnp.zeros((1, 8, 8, 3))), "low_res_channels=0"),
    ({"aug_level_embedding": True}, {}, "needs aug_level"),
])
def test_bad_inputs_raise_clear_errors(kwargs, inputs, match):
  args = dict(x=jnp.zeros((1, H, W, C)), t=jnp.zeros((1,)), context=jnp.zeros((1, L, 12)))
  args.update(inputs)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(UNet(**{**CONFIG, **kwargs}).init, jax.random.key(0), **args)


def test_super_resolution_conditioning_shapes():
  """low_res (any size, resized) and aug_level feed a cascade stage; output keeps x's shape."""
  model = UNet(**{**CONFIG, "attention_levels": (0, 1), "low_res_channels": 3,
                  "aug_level_embedding": True, "out_channels": 3, "scale_shift": True,
                  "dropout_rate": 0.1})
  x, t, context = _inputs()
  low_res = jnp.zeros((B, 8, 8, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, context, low_res=low_res,
                             aug_level=0.1)
  names = set(variables["params"])
  assert {"aug_fc1", "time_fc1", "down_0_attn_0", "up_1_attn_1", "mid_attn"} <= names
  conv_in = variables["params"]["conv_in"]["kernel"]
  assert nn.unbox(conv_in).shape == (3, 3, C + 3, 16)
  train_apply = functools.partial(model.apply, train=True, rngs={"dropout": jax.random.key(1)})
  out = jax.eval_shape(train_apply, variables, x, t, context, low_res=low_res,
                       aug_level=jnp.full((B,), 0.1))
  assert out.shape == (B, H, W, 3) and out.dtype == jnp.float32
