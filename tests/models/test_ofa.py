"""OFA: the encoder's [image; instruction] sequence against a numpy transcription, instruction
padding masked out, K instructions per image equal to K copies of the image, cached decoding
against recomputation, and bad input."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import build_model

from decoding_checks import assert_cached_decoding_equals_recomputing, randomised

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB, MAX_LENGTH, SOURCE_LENGTH, WIDTH = 30, 8, 9, 16
VISION = dict(name="vision_transformer", patch_size=8, width=12, num_layers=1, num_heads=2,
              mlp_ratio=2.0)
PER_IMAGE = 5  # 16x16 px, 8 px patches: 4 patch tokens + the class token
# Two images, K = 2 instructions each (rows 2i, 2i + 1 are image i's), padded differently.
INSTRUCTION = np.array([[1, 5, 6, 7, 2, 0, 0],
                        [1, 8, 2, 0, 0, 0, 0],
                        [1, 9, 9, 10, 11, 12, 2],
                        [1, 13, 14, 2, 0, 0, 0]], np.int32)


def _model(**fields):
  config = dict(name="ofa", vision_encoder=VISION, image_positions=8, width=WIDTH,
                encoder_layers=2, decoder_layers=2, num_heads=2, mlp_ratio=2.0)
  return build_model({**config, **fields}, vocab_size=VOCAB, max_length=MAX_LENGTH,
                     source_length=SOURCE_LENGTH)


@pytest.fixture(scope="module")
def setup():
  model = _model()
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  tokens = jnp.ones((4, MAX_LENGTH), jnp.int32)
  params = fast_jit(model.init)(jax.random.key(1), images, jnp.asarray(INSTRUCTION),
                                tokens)["params"]
  return model, randomised(nn.unbox(params), 2), images


def _layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _sincos_grid(side, width):
  """2-D sin-cos positions of a side x side grid, row-major: [sin, cos] of the row at
  frequencies 10000^(-k / (width / 4)), then the same of the column."""
  out = np.zeros((side * side, width))
  quarter = width // 4
  for r in range(side):
    for c in range(side):
      for k in range(quarter):
        w = 10000.0 ** (-k / quarter)
        out[r * side + c, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = [
            np.sin(r * w), np.cos(r * w), np.sin(c * w), np.cos(c * w)]
  return out


@pytest.mark.parametrize("positions", ["learned", "sincos"])
def test_the_encoder_input_is_the_projected_image_then_the_embedded_instruction(setup,
                                                                                 positions):
  """With no encoder layers the memory is ln_final([image_proj(ViT) + image pos + type 0;
  token embed + pos + type 1]): transcribed in numpy. The image positions are learned, or the
  fixed 2-D sin-cos grid (none for the class token)."""
  model, _, images = setup
  shallow = _model(encoder_layers=0, image_position_embedding=positions)
  params = randomised(nn.unbox(fast_jit(shallow.init)(
      jax.random.key(3), images, jnp.asarray(INSTRUCTION),
      jnp.ones((4, MAX_LENGTH), jnp.int32))["params"]), 4)
  memory, mask = shallow.apply({"params": params}, images, jnp.asarray(INSTRUCTION),
                               method=shallow.encode)
  vit = shallow.vision_encoder.clone(parent=None)
  vision, _ = vit.apply({"params": params["vision_encoder"]}, images)
  enc = jax.tree.map(np.asarray, params["encoder"])
  image = np.asarray(vision) @ enc["image_proj"]["fc"]["kernel"] + enc["image_proj"]["fc"]["bias"]
  if positions == "learned":
    image_pos = enc["image_proj"]["pos_embed"][:PER_IMAGE]
  else:
    assert "pos_embed" not in enc["image_proj"]  # fixed: nothing to train or warm-start
    image_pos = np.concatenate([np.zeros((1, WIDTH)), _sincos_grid(2, WIDTH)])
  image = image + image_pos + enc["type_embed"][0]
  text = (enc["token_embed"]["embedding"][INSTRUCTION] + enc["pos_embed"][:INSTRUCTION.shape[1]]
          + enc["type_embed"][1])
  expected = np.concatenate([np.repeat(image, 2, axis=0), text], axis=1)
  ln = enc["transformer"]["ln_final"]
  np.testing.assert_allclose(memory, _layer_norm(expected, ln["scale"], ln["bias"]),
                             atol=2e-5, rtol=2e-5)
  np.testing.assert_array_equal(mask, np.concatenate(
      [np.ones((4, PER_IMAGE), bool), INSTRUCTION != 0], axis=1))


def test_instruction_padding_changes_nothing(setup):
  model, params, images = setup
  tokens = jax.random.randint(jax.random.key(5), (4, MAX_LENGTH), 1, VOCAB)
  logits = model.apply({"params": params}, images, jnp.asarray(INSTRUCTION), tokens)
  longer = np.pad(INSTRUCTION, ((0, 0), (0, SOURCE_LENGTH - INSTRUCTION.shape[1])))
  np.testing.assert_allclose(
      model.apply({"params": params}, images, jnp.asarray(longer), tokens), logits,
      atol=1e-5, rtol=1e-5)
  # ... while a word of the instruction does change them.
  other = INSTRUCTION.copy()
  other[1, 1] = 20
  changed = np.asarray(model.apply({"params": params}, images, jnp.asarray(other), tokens))
  assert np.abs(changed[1] - np.asarray(logits)[1]).max() > 1e-3
  np.testing.assert_allclose(np.delete(changed, 1, 0), np.delete(np.asarray(logits), 1, 0),
                             atol=1e-6)


def test_k_instructions_per_image_equal_k_copies_of_the_image(setup):
  model, params, images = setup
  tokens = jax.random.randint(jax.random.key(6), (4, MAX_LENGTH), 1, VOCAB)
  shared = model.apply({"params": params}, images, jnp.asarray(INSTRUCTION), tokens)
  copies = model.apply({"params": params}, jnp.repeat(images, 2, axis=0),
                       jnp.asarray(INSTRUCTION), tokens)
  np.testing.assert_allclose(shared, copies, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["greedy", "beam_search"])
def test_cached_decoding_equals_recomputing_every_step(setup, method):
  model, params, images = setup
  prompt = jnp.array([[1, 5, 6], [1, 0, 0], [1, 7, 0], [1, 0, 0]], jnp.int32)
  lengths = jnp.array([3, 1, 2, 1], jnp.int32)
  instruction = jnp.asarray(INSTRUCTION)
  # The cache encodes each image once for its 2 rows; the recomputation gives each row its
  # own copy of its image (so beam search can expand rows with their context).
  assert_cached_decoding_equals_recomputing(
      model, params, lambda p: model.init_cache(p, images, MAX_LENGTH, instruction=instruction),
      (jnp.repeat(images, 2, 0), instruction), prompt, lengths, MAX_LENGTH, method)


def test_bad_inputs_fail_naming_the_problem(setup):
  model, params, images = setup
  tokens = jnp.ones((4, MAX_LENGTH), jnp.int32)
  long_instruction = jnp.ones((4, SOURCE_LENGTH + 1), jnp.int32)
  with pytest.raises(ValueError, match=r"instruction has 10 tokens, more than the encoder's "
                                       r"source_length=9"):
    model.apply({"params": params}, images, long_instruction, tokens)
  with pytest.raises(ValueError, match=r"instruction rows must be a multiple of the images .* "
                                       r"got 3 rows for 2 images"):
    model.apply({"params": params}, images, jnp.asarray(INSTRUCTION[:3]), tokens[:3])
  with pytest.raises(ValueError, match="instruction and tokens must have the same rows, got 4 "
                                       "and 2"):
    model.apply({"params": params}, images, jnp.asarray(INSTRUCTION), tokens[:2])
  with pytest.raises(ValueError, match=r"L <= max_length=8"):
    model.apply({"params": params}, images, jnp.asarray(INSTRUCTION),
                jnp.ones((4, MAX_LENGTH + 1), jnp.int32))
  with pytest.raises(ValueError, match=r"cache max_length must be in \[1, 8\]"):
    model.init_cache(params, images, MAX_LENGTH + 1, instruction=jnp.asarray(INSTRUCTION))


def test_bad_image_positions_fail_naming_the_problem():
  images = jnp.zeros((2, 16, 16, 3))
  init = lambda model, imgs: model.init(jax.random.key(0), imgs, jnp.asarray(INSTRUCTION),
                                        jnp.ones((4, MAX_LENGTH), jnp.int32))
  with pytest.raises(ValueError, match=r"position_embedding must be one of \('learned', "
                                       r"'sincos'\), got 'rope'"):
    init(_model(image_position_embedding="rope"), images)
  # 16 x 24 px: 2 x 3 patches and a class token, not a square grid.
  with pytest.raises(ValueError, match=r"need S\^2 patch tokens \(or 1 \+ S\^2 with a class "
                                       r"token\), got 7 tokens"):
    init(_model(image_position_embedding="sincos"), jnp.zeros((2, 16, 24, 3)))
