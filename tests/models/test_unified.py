"""The unified (LLaVA-style) decoder against a hand-built spliced sequence, cached decoding
against recomputation, an 8-device sharded loss, and its bad-input errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import decoding
from mmjax.models import build_model
from mmjax.nn.positions import sincos_2d_positions
from mmjax.nn.transformer import Transformer
from mmjax.train import sharding

from decoding_checks import assert_cached_decoding_equals_recomputing, randomised

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB, MAX_LENGTH, IMAGE = 24, 10, 23
LM = dict(width=16, num_layers=2, num_heads=2, mlp_ratio=2.0)
VISION = dict(name="vision_transformer", patch_size=8, width=12, num_layers=1, num_heads=2,
              mlp_ratio=2.0)
PER_IMAGE = 5  # 16x16 px, 8 px patches: 4 patch tokens + the class token
# Two images a row: one word before the first image in row 0, the first token an image in
# row 1, padding (0) at the end of row 0.
INTERLEAVED = np.array([[5, IMAGE, 6, 7, IMAGE, 8, 9, 0],
                        [IMAGE, 3, 4, IMAGE, 10, 11, 12, 13]], np.int32)


def _model(**fields):
  config = dict(name="unified_decoder", image_positions=8, vision_encoder=VISION, **LM)
  return build_model({**config, **fields}, vocab_size=VOCAB, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def interleaved():
  model = _model(image_token_id=IMAGE)
  images = jax.random.uniform(jax.random.key(0), (2, 2, 16, 16, 3))
  params = fast_jit(model.init)(jax.random.key(1), images, jnp.asarray(INTERLEAVED))["params"]
  return model, randomised(nn.unbox(params), 2), images


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _projected_images(model, params, images):
  """numpy `[B, M, K, D]`: the ViT's tokens through fc1 -> GELU -> fc2, plus image positions."""
  batch, num_images = images.shape[:2]
  vit = model.vision_encoder.clone(parent=None)
  tokens, _ = vit.apply({"params": params["vision_encoder"]},
                        images.reshape((-1,) + images.shape[2:]))
  proj = params["projector"]
  h = _gelu_tanh(np.asarray(tokens) @ proj["fc1"]["kernel"] + proj["fc1"]["bias"])
  if model.drop_class_token:
    h = h[:, 1:]
  h = h @ proj["fc2"]["kernel"] + proj["fc2"]["bias"]
  if model.image_position_embedding == "learned":
    h = h + proj["pos_embed"][:h.shape[1]]
  else:  # the 2 x 2 patch grid (sincos_2d_positions is checked against numpy in test_dit)
    assert "pos_embed" not in proj
    h = h + sincos_2d_positions(2, 2, h.shape[-1])
  return np.asarray(h).reshape(batch, num_images, h.shape[1], -1)


def _hand_built_logits(model, params, images, rows):
  """Logits `[B, L, V]` from spliced sequences built token by token in numpy.

  `rows`: per row the list of tokens, each an int (text) or ("image", m). Text token j (j-th
  text token of the row) embeds as token_embed[id] + pos_embed[j]; image m as its K projected
  tokens. The LM is a plain `Transformer` on those embeddings; token t's logits are read at its
  last slot.
  """
  projected = _projected_images(model, params, images)
  embed, pos = np.asarray(params["token_embed"]["embedding"]), np.asarray(params["pos_embed"])
  lm = Transformer(LM["num_layers"], LM["num_heads"], int(LM["width"] * LM["mlp_ratio"]))
  head = params["lm_head"]
  out = []
  for b, row in enumerate(rows):
    sequence, last_slots, text_position = [], [], 0
    for token in row:
      if isinstance(token, tuple):
        sequence.extend(projected[b, token[1]])
      else:
        sequence.append(embed[token] + pos[text_position])
        text_position += 1
      last_slots.append(len(sequence) - 1)
    h = jax.jit(functools.partial(lm.apply, causal=True))({"params": params["transformer"]},
                                                          np.stack(sequence)[None])[0]
    out.append(np.asarray(h)[last_slots] @ head["kernel"] + head["bias"])
  return np.stack(out)


def test_interleaved_rows_equal_the_hand_built_splice(interleaved):
  model, params, images = interleaved
  logits = fast_jit(model.apply)({"params": params}, images, jnp.asarray(INTERLEAVED))
  rows = []
  for row in INTERLEAVED:
    rank = iter(range(2))
    rows.append([("image", next(rank)) if t == IMAGE else int(t) for t in row])
  expected = _hand_built_logits(model, params, images, rows)
  assert logits.shape == (2, INTERLEAVED.shape[1], VOCAB)
  np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=2e-4)


def test_images_first_rows_equal_the_hand_built_splice(interleaved):
  _, params, images = interleaved
  model = _model()  # image_token_id=None: the same parameters, images before the text
  text = np.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 10, 11, 2]], np.int32)
  logits = fast_jit(model.apply)({"params": params}, images, jnp.asarray(text))
  rows = [[("image", 0), ("image", 1), *map(int, row)] for row in text]
  expected = _hand_built_logits(model, params, images, rows)[:, 2:]
  np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=2e-4)


def test_fixed_grid_positions_of_the_patch_tokens_equal_the_hand_built_splice():
  """With "sincos" image positions and the class token dropped, each image's 4 patch tokens
  carry the 2-D sin-cos positions of their 2 x 2 grid (no trained positions)."""
  model = _model(image_token_id=IMAGE, image_position_embedding="sincos", drop_class_token=True)
  images = jax.random.uniform(jax.random.key(7), (2, 2, 16, 16, 3))
  params = randomised(nn.unbox(fast_jit(model.init)(jax.random.key(8), images,
                                                    jnp.asarray(INTERLEAVED))["params"]), 9)
  logits = fast_jit(model.apply)({"params": params}, images, jnp.asarray(INTERLEAVED))
  rows = []
  for row in INTERLEAVED:
    rank = iter(range(2))
    rows.append([("image", next(rank)) if t == IMAGE else int(t) for t in row])
  np.testing.assert_allclose(logits, _hand_built_logits(model, params, images, rows),
                             atol=2e-4, rtol=2e-4)


def _images_first_setup():
  model = _model()
  images = jax.random.uniform(jax.random.key(3), (3, 2, 16, 16, 3))
  params = fast_jit(model.init)(jax.random.key(4), images, jnp.ones((3, 4), jnp.int32))["params"]
  return model, randomised(nn.unbox(params), 5), images


@pytest.mark.parametrize("method", ["greedy", "beam_search"])
def test_cached_decoding_equals_recomputing_every_step(method):
  model, params, images = _images_first_setup()
  prompt = jnp.array([[1, 5, 6, 7], [1, 8, 0, 0], [1, 0, 0, 0]], jnp.int32)
  lengths = jnp.array([4, 2, 1], jnp.int32)
  assert_cached_decoding_equals_recomputing(
      model, params, lambda p: model.init_cache(p, images, MAX_LENGTH), (images,), prompt,
      lengths, MAX_LENGTH, method)


def test_sharded_loss_equals_single_device():
  model, params, images = _images_first_setup()
  images = jnp.tile(images, (3, 1, 1, 1, 1))[:8]
  text = jax.random.randint(jax.random.key(6), (8, MAX_LENGTH), 1, VOCAB)

  def loss(p, images, text):
    logits = model.apply({"params": p}, images, text)
    log_probs = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(log_probs, text[:, 1:, None], axis=-1).mean()

  single = float(jax.jit(loss)(params, images, text))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  boxed = jax.eval_shape(model.init, jax.random.key(4), images, text)["params"]
  shardings = sharding.logical_shardings(boxed, mesh)
  specs = [s.spec for s in jax.tree.leaves(shardings)]
  assert any("tensor" in jax.tree.leaves(tuple(s)) for s in specs)
  placed = jax.device_put(params, shardings)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  sharded = float(jax.jit(loss)(placed, jax.device_put(images, batch),
                                jax.device_put(text, batch)))
  assert sharded == pytest.approx(single, rel=1e-5)


def test_bad_inputs_fail_naming_the_problem(interleaved):
  model, params, images = interleaved
  apply = functools.partial(model.apply, {"params": params})
  # Shape evaluation traces every other check without running the model.
  init = lambda model, *args: jax.eval_shape(model.init, jax.random.key(0), *args)
  one_image_short = INTERLEAVED.copy()
  one_image_short[1, 3] = 4
  with pytest.raises(ValueError, match=r"row 1 has 1 image placeholders \(id 23\) but 2 images"):
    apply(images, jnp.asarray(one_image_short))
  with pytest.raises(ValueError, match="row 0 has 2 image placeholders .* but 1 images"):
    apply(images[:, :1], jnp.asarray(INTERLEAVED))
  too_long = np.array([[IMAGE, IMAGE] + [3] * 11] * 2, np.int32)  # 11 text tokens
  with pytest.raises(ValueError, match="11 text positions, more than max_length=10"):
    jax.eval_shape(apply, images, jnp.asarray(too_long))
  with pytest.raises(ValueError, match="image_token_id=30 is outside the vocabulary"):
    init(_model(image_token_id=30), images, jnp.asarray(INTERLEAVED))
  with pytest.raises(ValueError, match="init_cache decodes images-first rows"):
    model.init_cache(params, images, 4)
  first = _model()
  with pytest.raises(ValueError, match=r"cache max_length must be in \[1, 10\]"):
    first.init_cache(params, images, 11)
  with pytest.raises(ValueError, match="gives 5 tokens per image, more than image_positions=4"):
    init(_model(image_positions=4), images, jnp.ones((2, 3), jnp.int32))
  with pytest.raises(ValueError, match="projector must be one of"):
    init(_model(projector="qformer"), images, jnp.ones((2, 3), jnp.int32))


def test_a_left_padded_batch_generates_what_each_row_generates_alone():
  model, params, images = _images_first_setup()
  rows = [[1, 5, 6, 7], [1, 8], [1]]
  width = max(map(len, rows))
  left = np.array([[0] * (width - len(r)) + r for r in rows], np.int32)
  mask = left != 0
  new = MAX_LENGTH - width

  @functools.partial(jax.jit, static_argnums=3)
  def generate(params, images, prompt, max_length, lengths):
    cache = model.init_cache(params, images, max_length)
    return decoding.greedy(functools.partial(model.decode_step, params), cache, prompt, lengths,
                           max_new_tokens=new, eos_id=None).tokens

  prompt, lengths = decoding.from_left_padded(left, mask)
  batched = generate(params, images, prompt, MAX_LENGTH, lengths)
  for b, row in enumerate(rows):
    alone = generate(params, images[b:b + 1], jnp.asarray([row], jnp.int32), len(row) + new,
                     jnp.asarray([len(row)], jnp.int32))
    np.testing.assert_array_equal(batched[b], alone[0])
