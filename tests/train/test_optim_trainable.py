"""`optim.trainable`: frozen leaves stay bit-identical and keep no Adam moments, the trainable
ones follow a plain clip + AdamW chain run on them alone; path-pattern matching; errors; the
CLI override and config.json round trip."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax.train.config import apply_overrides, load_config, load_run_config, save_run_config
from mmjax.train.optim import count_params, make_optimizer, trainable_mask

from conftest import CONFIG

TOTAL_STEPS = 5
NUM_STEPS = 3


def _optim_config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({**dict(
      name="adamw", learning_rate=0.1, warmup_steps=1, end_lr_ratio=0.1, weight_decay=0.05,
      b1=0.9, b2=0.98, eps=1e-6, clip_grad_norm=1.0, trainable=()), **overrides})


def _boxed_params():
  """Two subtrees "a" and "b", some leaves boxed as `nn.with_logical_partitioning` makes them."""
  keys = iter(jax.random.split(jax.random.key(0), 8))
  normal = lambda *shape: jax.random.normal(next(keys), shape)
  return {
      "a": {"dense": {"kernel": nn.Partitioned(normal(4, 3), names=("embed", "mlp")),
                      "bias": normal(3)},
            "scale": normal()},
      "b": {"proj": {"kernel": nn.LogicallyPartitioned(normal(3, 2), names=("embed", None),
                                                       mesh=None, rules=None),
                     "bias": normal(2)},
            "w": normal(2, 2)},
  }


def _grads(params, step):
  """Gradients whose "a" norm swings over 1e4 between steps, so that clipping over all
  gradients would scale "b"'s by a different factor each step (Adam undoes a constant one)."""
  a_scale = (1e3, 0.1, 30.0)[step]
  keys = iter(jax.random.split(jax.random.key(100 + step), 8))
  grads = jax.tree.map(lambda p: 3.0 * jax.random.normal(next(keys), p.shape), params)
  grads["a"] = jax.tree.map(lambda g: a_scale * g, grads["a"])
  return grads


def _run(tx, params, boxed):
  """(params, opt state, [updates per step]) after NUM_STEPS updates of `tx`, its state
  initialised on the boxed params and then unboxed, as `mmjax.train.state.build_state` does."""
  state = nn.unbox(tx.init(boxed))
  history, update = [], jax.jit(tx.update)
  for step in range(NUM_STEPS):
    updates, state = update(_grads(params, step), state, params)
    history.append(updates)
    params = optax.apply_updates(params, updates)
  return params, state, history


def _reference_chain(config):
  """Today's optimizer, written out: clip, then AdamW decaying matrices only."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, TOTAL_STEPS,
      end_value=config.learning_rate * config.end_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(config.clip_grad_norm),
      optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay,
                  mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))


def test_frozen_leaves_stay_and_trainable_ones_follow_adamw_on_them_alone():
  config = _optim_config(trainable=("b",))
  boxed = _boxed_params()
  params = nn.unbox(boxed)
  tx, _ = make_optimizer(config, TOTAL_STEPS)
  trained, state, _ = _run(tx, params, boxed)

  for before, after in zip(jax.tree.leaves(params["a"]), jax.tree.leaves(trained["a"])):
    np.testing.assert_array_equal(after, before)
  # Reference: clip + AdamW on the "b" subtree only, with "b"'s gradients only.
  reference = params["b"]
  reference_tx = _reference_chain(config)
  reference_state, update = reference_tx.init(reference), jax.jit(reference_tx.update)
  for step in range(NUM_STEPS):
    grads_b = _grads(params, step)["b"]
    updates, reference_state = update(grads_b, reference_state, reference)
    reference = optax.apply_updates(reference, updates)
  for path, expected in jax.tree_util.tree_leaves_with_path(reference):
    actual = _at(trained["b"], path)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
    assert not np.allclose(actual, _at(params["b"], path))  # "b" did train
  # Adam's moments exist for "b" only: mu and nu, each of b's size.
  b_size = sum(x.size for x in jax.tree.leaves(params["b"]))
  moment_size = sum(x.size for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
  assert moment_size == 2 * b_size


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@pytest.mark.parametrize("trainable", [(), [], None])
def test_empty_trainable_is_todays_optimizer(trainable):
  config = _optim_config(trainable=trainable)
  boxed = _boxed_params()
  params = nn.unbox(boxed)
  _, state, history = _run(make_optimizer(config, TOTAL_STEPS)[0], params, boxed)
  _, reference_state, reference_history = _run(_reference_chain(config), params, boxed)
  assert jax.tree.structure(state) == jax.tree.structure(reference_state)
  for updates, reference in zip(history, reference_history):
    for actual, expected in zip(jax.tree.leaves(updates), jax.tree.leaves(reference)):
      np.testing.assert_array_equal(actual, expected)


def _leaf():
  return jnp.zeros((2,))


PATHS = {
    "transformer": {"gated_xattn_1": {"attn": {"kernel": _leaf()}},
                    "gated_xattn_12": {"ln": {"scale": _leaf()}},
                    "block_1": {"mlp": {"kernel": _leaf()}}},
    "proj": {"kernel": _leaf()},
    "projector": {"fc1": {"kernel": nn.Partitioned(jnp.zeros((2, 2)), names=("embed", "mlp"))},
                  "fc1_bias": _leaf()},
    "token_embed": {"embedding": _leaf()},
}


def _expected(true_paths):
  """PATHS' structure (unboxed) with True at the "/"-joined `true_paths`."""
  def mark(tree, prefix):
    if isinstance(tree, dict):
      return {k: mark(v, f"{prefix}{k}/") for k, v in tree.items()}
    return prefix[:-1] in true_paths
  return mark(nn.unbox(PATHS), "")


@pytest.mark.parametrize("patterns,true_paths", [
    (("transformer/gated_xattn_*",), {"transformer/gated_xattn_1/attn/kernel",
                                       "transformer/gated_xattn_12/ln/scale"}),
    (("transformer/gated_xattn_1",), {"transformer/gated_xattn_1/attn/kernel"}),
    (("proj",), {"proj/kernel"}),
    (("projector",), {"projector/fc1/kernel", "projector/fc1_bias"}),
    (("projector/fc1",), {"projector/fc1/kernel"}),
    (("token_embed", "proj/"), {"token_embed/embedding", "proj/kernel"}),
    (("*/kernel",), {"transformer/gated_xattn_1/attn/kernel", "transformer/block_1/mlp/kernel",
                     "proj/kernel", "projector/fc1/kernel"}),
])
def test_patterns_match_a_path_or_its_prefixes(patterns, true_paths):
  assert trainable_mask(PATHS, patterns) == _expected(true_paths)


def test_count_params_of_boxed_and_abstract_params():
  boxed = _boxed_params()
  expected = (3 * 2 + 2 + 2 * 2, 4 * 3 + 3 + 1 + 3 * 2 + 2 + 2 * 2)
  assert count_params(boxed, ("b",)) == expected
  assert count_params(jax.eval_shape(lambda: boxed), ["b"]) == expected
  assert count_params(boxed, ()) == (expected[1], expected[1])


def test_pattern_matching_nothing_names_it_and_the_top_level_params():
  tx, _ = make_optimizer(_optim_config(trainable=("b", "transformer/gated_*")), TOTAL_STEPS)
  with pytest.raises(ValueError, match=r"\['transformer/gated_\*'\] match no parameter\. .*"
                                       r"top-level parameters are \['a', 'b'\]"):
    tx.init(_boxed_params())


def test_all_frozen_is_an_error():
  tx, _ = make_optimizer(_optim_config(trainable=("c", "a/nope")), TOTAL_STEPS)
  with pytest.raises(ValueError, match=r"\['c', 'a/nope'\] match no parameter; no parameter "
                                       r"would train"):
    tx.init(_boxed_params())


@pytest.mark.parametrize("trainable", ["b", ("b", ""), ("b", 3)])
def test_malformed_trainable_is_an_error(trainable):
  with pytest.raises(ValueError, match="optim.trainable"):
    make_optimizer(_optim_config(trainable=trainable), TOTAL_STEPS)


def test_cli_override_and_config_json_round_trip(tmp_path):
  config = load_config(CONFIG)
  assert config.optim.trainable == ()
  config = apply_overrides(config, ['optim.trainable=("text_proj", "image_encoder/transformer")'])
  assert config.optim.trainable == ("text_proj", "image_encoder/transformer")
  assert apply_overrides(config, ['optim.trainable=["a"]']).optim.trainable == ("a",)
  save_run_config(config, tmp_path)
  loaded = load_run_config(tmp_path).optim  # JSON gives a list back
  params = {"text_proj": {"kernel": jnp.ones((2, 2))}, "logit_scale": jnp.ones(()),
            "image_encoder": {"transformer": {"ln": {"scale": jnp.ones(2)}}}}
  tx, _ = make_optimizer(loaded, 10)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert float(updates["logit_scale"]) == 0.0
  assert trainable_mask(params, loaded.trainable) == {
      "text_proj": {"kernel": True}, "logit_scale": False,
      "image_encoder": {"transformer": {"ln": {"scale": True}}}}


class _TwoLayerTask:
  """loss = sum(tanh(x @ bottom) @ top): "bottom" sits under "top", as a vision tower does."""

  def loss_and_grad(self, params, batch, rng):
    def loss_fn(p):
      return jnp.sum(jnp.tanh(batch @ p["bottom"]) @ p["top"]), {}
    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def _step_dots(trainable):
  """The train step of `_TwoLayerTask` under `trainable`: (its metrics, dot ops compiled)."""
  from mmjax.train.state import TrainState
  from mmjax.train.trainer import make_train_step
  config = _optim_config(trainable=trainable, clip_grad_norm=0.0, weight_decay=0.0)
  tx, schedule = make_optimizer(config, TOTAL_STEPS)
  params = {"bottom": jnp.arange(12.0).reshape(4, 3) / 10, "top": jnp.ones((3, 2))}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(0)))
  batch = jnp.linspace(-1, 1, 20).reshape(5, 4)
  step = jax.jit(make_train_step(_TwoLayerTask(), tx, schedule, tuple(trainable)))
  _, metrics = step(state, batch)
  hlo = step.lower(state, batch).compile().as_text()
  grads = jax.grad(lambda p: _TwoLayerTask().loss_and_grad(p, batch, None)[0][0])(params)
  return metrics, hlo.count(" dot("), grads


def test_frozen_gradients_are_neither_logged_nor_computed():
  metrics, dots_all, grads = _step_dots(())
  assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-6)
  metrics, dots_frozen, grads = _step_dots(("top",))
  # grad_norm is over the trainable gradients only ...
  assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(grads["top"])),
                                                      rel=1e-6)
  # ... and the bottom layer's backward pass (its kernel gradient and the gradient through it)
  # is not compiled: 2 forward dots + 1 for top's gradient, against 2 + 3.
  assert (dots_all, dots_frozen) == (5, 3)
