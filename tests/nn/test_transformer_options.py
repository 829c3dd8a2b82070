"""The open_clip fidelity options of the transformer stack: `mlp_activation` ("quick_gelu")
and `layer_norm_epsilon`, against closed forms and a NumPy transcription of a pre-LN block;
the defaults against the same transcription with tanh GELU and eps 1e-6 (today's numbers)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import build_model
from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import MlpBlock, TransformerBlock, quick_gelu
from mmjax.nn.vit import VisionTransformer


def np_quick_gelu(h):
  return h / (1 + np.exp(-1.702 * h))


def np_gelu(h, approximate):
  if approximate:
    return 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
  return 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))


def np_layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_block(x, p, eps, activation):
  """Pre-LN block: x + Attn(LN(x)) then + MLP(LN(x)); float64, no masks."""
  h = np_layer_norm(x, p["ln_attn"], eps)
  attn_p = p["self_attn"]
  qkv = np.einsum("btd,dshk->btshk", h, attn_p["qkv"]["kernel"]) + attn_p["qkv"]["bias"]
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  attn = np.einsum("bhqk,bkhd->bqhd", probs, v)
  x = x + np.einsum("bqhd,hde->bqe", attn, attn_p["out"]["kernel"]) + attn_p["out"]["bias"]
  h = np_layer_norm(x, p["ln_mlp"], eps)
  h = activation(h @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"])
  return x + h @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


def _random_params(module, *args):
  """`module`'s params, every leaf replaced by a normal draw (LN scales around 1)."""
  params = nn.unbox(module.init(jax.random.key(0), *args)["params"])
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(1)
  new = []
  for path, leaf in leaves:
    draw = rng.normal(size=leaf.shape) * 0.3
    new.append(jnp.asarray(draw + (1.0 if "scale" in jax.tree_util.keystr(path) else 0.0),
                           jnp.float32))
  return jax.tree_util.tree_unflatten(treedef, new)


def test_quick_gelu_closed_form():
  h = np.linspace(-6, 6, 101).astype(np.float32)
  np.testing.assert_allclose(np.asarray(quick_gelu(jnp.asarray(h))),
                             np_quick_gelu(h.astype(np.float64)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation, approximate", [("quick_gelu", True), ("gelu", False),
                                                     ("gelu", True)])
def test_mlp_block_activation(activation, approximate):
  x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32) * 2
  mlp = MlpBlock(16, gelu_approximate=approximate, mlp_activation=activation)
  params = _random_params(mlp, x)
  expected_fn = np_quick_gelu if activation == "quick_gelu" else (
      lambda h: np_gelu(h, approximate))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  hidden = expected_fn(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  expected = hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  np.testing.assert_allclose(np.asarray(mlp.apply({"params": params}, x)), expected, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("fields, eps, activation", [
    (dict(), 1e-6, lambda h: np_gelu(h, True)),  # the defaults: today's block
    (dict(layer_norm_epsilon=1e-5, mlp_activation="quick_gelu", gelu_approximate=False), 1e-5,
     np_quick_gelu),
])
def test_block_matches_numpy_transcription(fields, eps, activation):
  # Features with variance ~1e-6, so eps 1e-5 against 1e-6 changes every normalised value.
  x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32) * 1e-3
  block = TransformerBlock(num_heads=2, mlp_dim=16, **fields)
  params = _random_params(block, x)
  params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  expected = np_block(x.astype(np.float64), params64, eps, activation)
  np.testing.assert_allclose(np.asarray(block.apply({"params": params}, x)), expected, rtol=2e-4,
                             atol=2e-4)


def _seen(module, variables, *args, **kwargs):
  """{module path: (epsilon or mlp_activation)} of every LayerNorm / MlpBlock a call runs.

  The call is only traced (`jax.eval_shape`): the interceptor sees every module all the same.
  """
  seen = {}

  def interceptor(next_fun, call_args, call_kwargs, context):
    if context.method_name == "__call__":
      if isinstance(context.module, nn.LayerNorm):
        seen["/".join(context.module.path)] = context.module.epsilon
      elif isinstance(context.module, MlpBlock):
        seen["/".join(context.module.path)] = context.module.mlp_activation
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v: module.apply(v, *args, **kwargs), variables)
  return seen


def _options_reach_every_layer(module, *args, layer_norms, mlps, **kwargs):
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  seen = _seen(module, variables, *args, **kwargs)
  norms = {k: v for k, v in seen.items() if isinstance(v, float)}  # every LayerNorm's eps
  assert sorted(norms) == sorted(layer_norms)
  assert set(norms.values()) == {1e-5}
  assert sorted(k for k, v in seen.items() if v == "quick_gelu") == sorted(mlps)


def test_options_reach_every_layer_norm_and_mlp_of_the_vit():
  vit = VisionTransformer(patch_size=4, width=16, num_layers=2, num_heads=2,
                          mlp_activation="quick_gelu", layer_norm_epsilon=1e-5)
  blocks = [f"transformer/block_{i}" for i in range(2)]
  _options_reach_every_layer(
      vit, jnp.ones((1, 8, 8, 3)),
      layer_norms=["ln_pre", "transformer/ln_final"] + [f"{b}/{n}" for b in blocks
                                                       for n in ("ln_attn", "ln_mlp")],
      mlps=[f"{b}/mlp" for b in blocks])


def test_options_reach_cross_and_decoder_layer_norms_of_the_text_transformer():
  text = TextTransformer(vocab_size=20, context_length=6, width=16, num_layers=1, num_heads=2,
                         cross_attention=True, decoder_attention="lm_attn",
                         mlp_activation="quick_gelu", layer_norm_epsilon=1e-5)
  tokens, context = jnp.ones((1, 6), jnp.int32), jnp.ones((1, 3, 16))
  for decoder, attn_norm in ((False, "ln_attn"), (True, "ln_lm_attn")):
    _options_reach_every_layer(
        text, tokens, context, decoder=decoder,
        layer_norms=[f"transformer/block_0/{n}" for n in (attn_norm, "ln_cross", "ln_mlp")]
        + ["transformer/ln_final"],
        mlps=["transformer/block_0/mlp"])


def test_adaptive_norm_block_layer_norms_take_the_epsilon():
  block = TransformerBlock(num_heads=2, mlp_dim=16, adaptive_norm=True, layer_norm_epsilon=1e-5)
  x, condition = jnp.ones((1, 4, 8)), jnp.ones((1, 8))
  variables = jax.eval_shape(lambda: block.init(jax.random.key(0), x, condition=condition))
  seen = _seen(block, variables, x, condition=condition)
  assert {k: v for k, v in seen.items() if isinstance(v, float)} == {"ln_attn": 1e-5,
                                                                     "ln_mlp": 1e-5}


def test_defaults_are_gelu_and_flax_epsilon():
  vit = VisionTransformer(patch_size=4, width=16, num_layers=1, num_heads=2)
  images = jnp.ones((1, 8, 8, 3))
  seen = _seen(vit, jax.eval_shape(lambda: vit.init(jax.random.key(0), images)), images)
  assert seen["transformer/block_0/mlp"] == "gelu"
  assert {v for v in seen.values() if isinstance(v, float)} == {1e-6}


def test_bad_activation_names_the_allowed_ones():
  with pytest.raises(ValueError, match=r"mlp_activation must be one of \('gelu', 'quick_gelu'\), "
                                       r"got 'relu'"):
    MlpBlock(8, mlp_activation="relu").init(jax.random.key(0), jnp.ones((1, 4)))


def test_registry_shares_the_options_with_both_towers():
  config = dict(name="clip", embed_dim=8, mlp_activation="quick_gelu", layer_norm_epsilon=1e-5,
                image_encoder=dict(name="vision_transformer", patch_size=4, width=16,
                                   num_layers=1, num_heads=2),
                text_encoder=dict(name="text_transformer", width=16, num_layers=1, num_heads=2,
                                  layer_norm_epsilon=1e-4))
  clip = build_model(config, text_encoder=dict(vocab_size=20, context_length=6))
  assert clip.image_encoder.mlp_activation == clip.text_encoder.mlp_activation == "quick_gelu"
  assert clip.image_encoder.layer_norm_epsilon == 1e-5
  assert clip.text_encoder.layer_norm_epsilon == 1e-4  # a tower's own value wins
