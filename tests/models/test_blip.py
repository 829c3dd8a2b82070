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


BLOCK_KEYS = {"ln_attn", "self_attn", "ln_causal_self_attn", "causal_self_attn", "ln_cross",
              "cross_attn", "ln_mlp", "mlp"}


def test_parameter_tree_shares_everything_but_self_attention(setup):
  _, params, *_ = setup
  assert set(params["text"]) == {"token_embed", "pos_embed", "transformer"}
  assert set(params["text"]["transformer"]) == {"block_0", "block_1", "ln_final"}
  for i in range(2):
    assert set(params["text"]["transformer"][f"block_{i}"]) == BLOCK_KEYS
  paths = _paths(params)
  # One copy of the cross-attention and MLP per layer, one embedding table, in the whole model.
  assert sum("cross_attn/query/kernel" in p for p in paths) == 2
  assert sum("mlp/fc1/kernel" in p and p.startswith("text/") for p in paths) == 2
  assert sum("token_embed" in p for p in paths) == 1
  assert sum(p.endswith("self_attn/qkv/kernel") and p.startswith("text/") for p in paths) == 4
  assert {"image_encoder", "text", "image_proj", "text_proj", "itm_head", "lm_head",
          "logit_scale"} == set(params)


def test_modes_share_all_parameters_except_their_self_attention(setup):
  """The parameters a text mode reads are those under params["text"] with a nonzero gradient
  of its features."""
  model, params, images, tokens, _ = setup

  @fast_jit
  def text_grads(params):
    image_tokens = model.apply({"params": params}, images, method=BLIP.encode_image_tokens)
    image_tokens = jax.lax.stop_gradient(image_tokens)
    grad = lambda mode, context: jax.grad(lambda p: model.apply(
        {"params": p}, tokens, context, mode=mode, method=BLIP.text_features).sum())(params)
    return {mode: grad(mode, None if mode == "text" else image_tokens)["text"]
            for mode in ("text", "grounded", "decoder")}

  used = {mode: {path for path, leaf in zip(_paths(grads), jax.tree.leaves(grads))
                 if np.abs(np.asarray(leaf)).max() > 0}
          for mode, grads in text_grads(params).items()}
  every = set(_paths(params["text"]))
  only = lambda *names: {p for p in every if p.split("/")[2:3] and p.split("/")[2] in names}
  # Per block: "self_attn" + "ln_attn" (encoders), "causal_self_attn" + its LN (decoder).
  encoder_attn, decoder_attn = only("self_attn", "ln_attn"), only("causal_self_attn",
                                                                  "ln_causal_self_attn")
  cross = only("cross_attn", "ln_cross")
  assert encoder_attn and decoder_attn and cross
  assert used["grounded"] == every - decoder_attn
  assert used["decoder"] == every - encoder_attn
  assert used["text"] == every - decoder_attn - cross
  assert used["grounded"] & used["decoder"] == every - encoder_attn - decoder_attn


def test_decoder_mode_is_causal_and_encoder_modes_are_bidirectional(setup):
  model, params, images, tokens, _ = setup
  image_tokens = model.apply({"params": params}, images, method=BLIP.encode_image_tokens)
  features = fast_jit(lambda tokens, image_tokens, mode: model.apply(
      {"params": params}, tokens, image_tokens, mode=mode, method=BLIP.text_features),
                      static_argnums=2)
  j = 6
  changed = tokens.at[:, j].set((tokens[:, j] + 1 - 3) % (VOCAB - 3) + 3)
  for mode, context in (("decoder", image_tokens), ("grounded", image_tokens), ("text", None)):
    before, after = features(tokens, context, mode), features(changed, context, mode)
    change = np.abs(np.asarray(after - before)).max(axis=(0, 2))  # [T]
    assert change[j] > 1e-3, mode
    if mode == "decoder":  # positions < j see nothing of token j, later ones do.
      np.testing.assert_array_equal(change[:j], 0.0)
      assert change[j + 1:].min() > 1e-3
    else:  # every position attends to token j
      assert change.min() > 1e-4, (mode, change)


def test_output_shapes(setup):
  _, params, images, tokens, forward = setup
  outputs = forward(params, images, tokens)
  shapes = {k: v.shape for k, v in outputs.items()}
  assert shapes == {"image_emb": (3, 8), "text_emb": (3, 8), "logit_scale": (),
                    "image_tokens": (3, 5, 16), "itm_logits": (3, 2),
                    "lm_logits": (3, 10, VOCAB)}
  np.testing.assert_allclose(jnp.linalg.norm(outputs["image_emb"], axis=-1), 1, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(outputs["text_emb"], axis=-1), 1, rtol=1e-5)


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
                if "['cross_kv'].key" in jax.tree_util.keystr(path)]
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
    apply(tokens, jnp.zeros((3, 5, 16)), mode="text", method=BLIP.text_features)
  with pytest.raises(ValueError, match="mode 'decoder' needs image_tokens"):
    apply(tokens, mode="decoder", method=BLIP.text_features)
  with pytest.raises(ValueError, match="mode must be one of"):
    apply(tokens, mode="encoder", method=BLIP.text_features)
