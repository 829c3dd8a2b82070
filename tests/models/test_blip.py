"""BLIP: parameter sharing between the three text modes, causality of the decoder only, cached
decoding = the full forward pass, output shapes, errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import decoding
from mmjax.models.blip import BLIP

VOCAB, MAX_LENGTH, EOS = 23, 12, 2
# Small programs on a shared CPU: skipping XLA's backend optimisations halves compile time.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def setup():
  model = BLIP(vocab_size=VOCAB, max_length=MAX_LENGTH, embed_dim=8, patch_size=8,
               vision_width=16, vision_layers=1, vision_heads=2, text_width=16, text_layers=2,
               text_heads=2, mlp_ratio=2.0)
  images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 3, VOCAB)  # no padding
  params = nn.unbox(fast_jit(model.init)(jax.random.key(2), images, tokens)["params"])
  forward = fast_jit(lambda params, images, tokens: model.apply({"params": params}, images, tokens))
  return model, params, images, tokens, forward


def _paths(tree):
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return ["/".join(str(k.key) for k in path) for path, _ in leaves]


def test_parameter_tree_shares_everything_but_self_attention(setup):
  _, params, *_ = setup
  for i in range(2):
    block = params["text"][f"block_{i}"]
    assert set(block) == {"ln_self_attn", "self_attn", "ln_causal_self_attn", "causal_self_attn",
                          "ln_cross", "cross_attn", "ln_mlp", "mlp"}
  paths = _paths(params)
  # One copy of the cross-attention and MLP per layer, one embedding table, in the whole model.
  assert sum("cross_attn/query/kernel" in p for p in paths) == 2
  assert sum("mlp/fc1/kernel" in p and p.startswith("text/") for p in paths) == 2
  assert sum("token_embed" in p for p in paths) == 1
  assert sum(p.endswith("self_attn/qkv/kernel") and p.startswith("text/") for p in paths) == 4
  assert {"image_encoder", "text", "image_proj", "text_proj", "itm_head", "lm_head",
          "logit_scale"} == set(params)


def test_output_shapes(setup):
  _, params, images, tokens, forward = setup
  outputs = forward(params, images, tokens)
  shapes = {k: v.shape for k, v in outputs.items()}
  assert shapes == {"image_emb": (3, 8), "text_emb": (3, 8), "logit_scale": (),
                    "image_tokens": (3, 5, 16), "itm_logits": (3, 2),
                    "lm_logits": (3, 10, VOCAB)}
  np.testing.assert_allclose(jnp.linalg.norm(outputs["image_emb"], axis=-1), 1, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(outputs["text_emb"], axis=-1), 1, rtol=1e-5)


def test_decoder_is_causal_and_encoders_are_bidirectional(setup):
  _, params, images, tokens, forward = setup
  j = 6
  changed = tokens.at[:, j].set((tokens[:, j] + 1 - 3) % (VOCAB - 3) + 3)
  outputs, new = forward(params, images, tokens), forward(params, images, changed)
  # Decoder: positions < j see nothing of token j.
  np.testing.assert_array_equal(new["lm_logits"][:, :j], outputs["lm_logits"][:, :j])
  assert not np.allclose(new["lm_logits"][:, j], outputs["lm_logits"][:, j])
  # Encoders read token 0, which attends to token j in both of them.
  assert np.abs(new["itm_logits"] - outputs["itm_logits"]).max() > 1e-6
  assert np.abs(new["text_emb"] - outputs["text_emb"]).max() > 1e-6


def test_encoders_ignore_padding(setup):
  _, params, images, tokens, forward = setup
  padded = tokens.at[:, 8:].set(0)
  other = padded.at[:, 8].set(5)  # a different text whose first 8 tokens are the same...
  a, b = forward(params, images, padded), forward(params, images, other.at[:, 8].set(0))
  assert np.abs(forward(params, images, other)["itm_logits"] - a["itm_logits"]).max() > 1e-6
  np.testing.assert_allclose(a["itm_logits"], b["itm_logits"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a["text_emb"], b["text_emb"], rtol=1e-5, atol=1e-6)


def test_cached_decoding_equals_full_forward(setup):
  model, params, images, tokens, forward = setup
  outputs = forward(params, images, tokens)
  cache = fast_jit(model.init_cache, static_argnums=2)(params, images, MAX_LENGTH)
  assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))
  # The image tokens' cross-attention K/V are projected once, into the cache.
  cross_keys = [path for path, _ in jax.tree_util.tree_leaves_with_path(cache.kv)
                if "cached_cross_key" in jax.tree_util.keystr(path)]
  assert len(cross_keys) == model.text_layers
  step = fast_jit(functools.partial(model.decode_step, params))
  # Two 5-token chunks (one compilation): prefill at slots 0..4, then slots 5..9.
  first, cache = step(tokens[:, :5], cache, jnp.broadcast_to(jnp.arange(5), (3, 5)))
  second, cache = step(tokens[:, 5:], cache, jnp.broadcast_to(jnp.arange(5, 10), (3, 5)))
  np.testing.assert_allclose(jnp.concatenate([first, second], 1), outputs["lm_logits"],
                             atol=1e-4)


def test_greedy_decoding_equals_naive_greedy_over_the_full_forward(setup):
  model, params, images, tokens, forward = setup
  prompt = jnp.tile(jnp.array([[1, 5, 6]], jnp.int32), (3, 1))
  new_tokens = 7  # fills the 10 positions of the fixture's forward pass

  @fast_jit
  def caption(params, images):
    cache = model.init_cache(params, images, 3 + new_tokens)
    step_fn = functools.partial(model.decode_step, params)
    return decoding.greedy(step_fn, cache, prompt, max_new_tokens=new_tokens, eos_id=None).tokens

  generated = np.asarray(caption(params, images))
  naive = np.array(tokens)  # only positions < t matter for the logits at t - 1 (causal)
  naive[:, :3] = prompt
  for t in range(3, 10):
    naive[:, t] = np.argmax(forward(params, images, jnp.asarray(naive))["lm_logits"][:, t - 1], -1)
  np.testing.assert_array_equal(generated, naive[:, 3:])


def test_bad_inputs_raise(setup):
  model, params, images, tokens, _ = setup
  # Shapes only: the checks run at trace time.
  apply = lambda *args, **kw: jax.eval_shape(
      lambda *a: model.apply({"params": params}, *a, **kw), *args)
  with pytest.raises(ValueError, match="more than the text transformer's max_length=12"):
    apply(images, jnp.ones((3, 13), jnp.int32))
  with pytest.raises(ValueError, match="same batch size, got 2 and 3"):
    apply(images[:2], tokens)
  with pytest.raises(ValueError, match=r"cache max_length must be in \[1, 12\]"):
    model.init_cache(params, images, 13)
  with pytest.raises(ValueError, match="mode 'text' takes no image_tokens"):
    apply(tokens, jnp.zeros((3, 5, 16)), mode="text", method=lambda m, *a, **k: m.text(*a, **k))
