"""Flamingo: at init it is exactly the frozen LM (a `TextDecoder` whose params are loaded in);
an open gate changes only tokens at or after an image; one optimiser step on
`trainable_mask` leaves the LM and vision encoder bit-identical."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.models import build_model
from mmjax.models.captioner import TextDecoder
from mmjax.models.flamingo import load_lm_params, trainable_mask

from decoding_checks import assert_cached_decoding_equals_recomputing, randomised

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 20
IMAGE, EOC = VOCAB, VOCAB + 1  # the two new tokens
MAX_LENGTH = 12
# "x <image> a red circle <eoc> <image> a blue square <eoc>": one word before the first image.
TOKENS = np.array([[5, IMAGE, 6, 7, 8, EOC, IMAGE, 6, 9, 10, EOC],
                   [IMAGE, 11, 12, EOC, 3, 4, IMAGE, 13, 14, 15, EOC]], np.int32)
FIRST_IMAGE = [1, 0]  # position of each row's first <image>
LM = dict(width=16, num_layers=2, num_heads=2, mlp_ratio=2.0)
CONFIG = dict(name="flamingo", cross_attn_every=1, **LM,
              vision_encoder=dict(name="vision_transformer", patch_size=8, width=12,
                                  num_layers=1, num_heads=2, mlp_ratio=2.0),
              resampler=dict(name="perceiver_resampler", num_latents=2, num_layers=1,
                             num_heads=2, mlp_ratio=2.0))


@pytest.fixture(scope="module")
def setup():
  model = build_model(CONFIG, vocab_size=VOCAB, max_length=MAX_LENGTH, image_token_id=IMAGE,
                      num_new_tokens=2)
  images = jax.random.normal(jax.random.key(0), (2, 2, 16, 16, 3))
  params = fast_jit(model.init)(jax.random.key(1), images, jnp.asarray(TOKENS))["params"]
  lm = TextDecoder(VOCAB, MAX_LENGTH, cross_attention=False, **LM)
  lm_tokens = jnp.asarray(np.where(TOKENS >= VOCAB, 0, TOKENS))
  lm_params = fast_jit(lm.init)(jax.random.key(2), lm_tokens)["params"]
  params = nn.unbox(load_lm_params(params, lm_params))
  return model, params, images, lm, nn.unbox(lm_params), lm_tokens, fast_jit(model.apply)


def set_leaf(params, path, value):
  """A copy of the nested dict `params` with the leaf at `path` replaced."""
  if len(path) == 1:
    return {**params, path[0]: value}
  return {**params, path[0]: set_leaf(params[path[0]], path[1:], value)}


def test_closed_gates_give_exactly_the_loaded_lm(setup):
  model, params, images, lm, lm_params, lm_tokens, apply = setup
  # With the new rows at zero, a new token embeds as the LM's token 0 (its documented offset).
  params = set_leaf(params, ("new_token_embed", "embedding"),
                    jnp.zeros_like(params["new_token_embed"]["embedding"]))
  logits = apply({"params": params}, images, jnp.asarray(TOKENS))
  expected = fast_jit(lm.apply)({"params": lm_params}, lm_tokens)
  assert logits.shape == (2, TOKENS.shape[1], VOCAB + 2)
  np.testing.assert_array_equal(np.asarray(logits[..., :VOCAB]), np.asarray(expected))


def test_open_attention_gate_changes_only_tokens_at_or_after_an_image(setup):
  model, params, images, *_, apply = setup
  tokens = jnp.asarray(TOKENS)
  closed = np.asarray(apply({"params": params}, images, tokens))
  opened = set_leaf(params, ("transformer", "gated_xattn_0", "alpha_attn"), jnp.float32(0.5))
  changed = np.abs(np.asarray(apply({"params": opened}, images, tokens)) - closed).max(-1)
  for row, first in enumerate(FIRST_IMAGE):
    np.testing.assert_array_equal(changed[row, :first], 0.0)
    assert (changed[row, first:] > 1e-5).all(), changed[row]
  # The second image matters to the text after it (not only "some image"): swap it out.
  other = images.at[:, 1].set(jax.random.normal(jax.random.key(5), images.shape[2:]))
  swapped = np.abs(np.asarray(apply({"params": opened}, other, tokens))
                   - np.asarray(apply({"params": opened}, images, tokens))).max(-1)
  np.testing.assert_array_equal(swapped[:, :6], 0.0)
  assert (swapped[:, 6:] > 1e-6).all(), swapped


def test_frozen_parameters_stay_bit_identical_after_an_adamw_step(setup):
  model, params, images, *_ = setup
  for name in ("alpha_attn", "alpha_ffw"):  # open the gates so gradients reach the resampler
    for block in ("gated_xattn_0", "gated_xattn_1"):
      params = set_leaf(params, ("transformer", block, name), jnp.float32(0.3))
  mask = trainable_mask(params)
  labels = jax.tree.map(lambda trainable: "trainable" if trainable else "frozen", mask)
  optimizer = optax.multi_transform(
      {"trainable": optax.adamw(1e-2, weight_decay=0.0), "frozen": optax.set_to_zero()}, labels)
  targets = jnp.asarray(np.roll(TOKENS, -1, axis=1))

  def loss_fn(p):
    logits = model.apply({"params": p}, images, jnp.asarray(TOKENS))
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @fast_jit
  def step(p):
    grads = jax.grad(loss_fn)(p)
    updates, _ = optimizer.update(grads, optimizer.init(p), p)
    return optax.apply_updates(p, updates), grads

  new_params, grads = step(params)
  flat = jax.tree_util.tree_flatten_with_path
  trained = []
  for (path, old), new, grad, trainable in zip(
      flat(params)[0], jax.tree.leaves(new_params), jax.tree.leaves(grads), jax.tree.leaves(mask)):
    name = jax.tree_util.keystr(path)
    top = path[0].key
    if top in ("vision_encoder", "token_embed", "pos_embed", "lm_head") or (
        top == "transformer" and path[1].key.startswith(("block_", "ln_final"))):
      assert not trainable, name
      np.testing.assert_array_equal(np.asarray(new), np.asarray(old), err_msg=name)
      # The frozen LM and vision encoder do get gradients: the freezing is the mask's doing.
      assert np.abs(np.asarray(grad)).max() > 0, name
    else:
      assert trainable, name
      assert not np.array_equal(np.asarray(new), np.asarray(old)), name
      trained.append(top if top != "transformer" else path[1].key)
  assert set(trained) == {"resampler", "new_token_embed", "new_token_head", "gated_xattn_0",
                          "gated_xattn_1"}


def test_bad_inputs_raise(setup):
  model, params, images, *_ = setup
  with pytest.raises(ValueError, match="images must be"):
    model.apply({"params": params}, images[:, :, 0], jnp.asarray(TOKENS))
  with pytest.raises(ValueError, match="max_length"):
    model.apply({"params": params}, images, jnp.zeros((2, MAX_LENGTH + 1), jnp.int32))
  with pytest.raises(ValueError, match="no place"):
    load_lm_params(params, {"decoder": {"kernel": jnp.zeros(3)}})


@pytest.mark.parametrize("method", ["greedy", "beam_search"])
def test_cached_decoding_equals_recomputing_every_step(setup, method):
  """Prompts that end mid-chunk and right after an image, every gate open: the cache's media
  K/V and per-row image count give what a full forward pass over the buffer gives."""
  model, params, images, *_ = setup
  params = randomised(params, 3)
  for i in range(LM["num_layers"]):
    for gate in ("alpha_attn", "alpha_ffw"):
      params = set_leaf(params, ("transformer", f"gated_xattn_{i}", gate), jnp.float32(0.7))
  # Row 0: "x <image> a red" (then generates into chunk 1); row 1: "<image> ... <eoc> <image>".
  prompt = jnp.array([[5, IMAGE, 6, 7, 0, 0, 0], [IMAGE, 11, 12, EOC, 3, 4, IMAGE]], jnp.int32)
  lengths = jnp.array([4, 7], jnp.int32)
  assert_cached_decoding_equals_recomputing(
      model, params, lambda p: model.init_cache(p, images, MAX_LENGTH), (images,), prompt,
      lengths, MAX_LENGTH, method)
