"""Grounding building blocks: coordinate quantisation, the box loss against a naive formula,
coordinate-restricted decoding through `mmjax.decoding.greedy`, and bad input."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import decoding
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.models.captioner import Captioner
from mmjax.models.grounding import (CoordinateDecoder, box_loss, coordinate_example,
                                    cxcywh_to_xyxy, dequantize_coordinates, quantize_coordinates,
                                    restrict_to_coordinates, xyxy_to_cxcywh)

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("num_bins", [7, 32, 1000])
def test_quantisation_round_trip_is_within_half_a_bin(num_bins):
  coordinates = np.concatenate([np.random.default_rng(0).uniform(0, 1, 1000), [0.0, 1.0]])
  bins = quantize_coordinates(coordinates, num_bins)
  assert bins.dtype == np.int32 and bins.min() >= 0 and bins.max() <= num_bins - 1
  assert bins[-1] == num_bins - 1 and bins[-2] == 0
  error = np.abs(dequantize_coordinates(bins, num_bins) - coordinates)
  assert error.max() <= 0.5 / num_bins + 1e-6
  # jax arrays take the same path and give the same bins.
  np.testing.assert_array_equal(np.asarray(quantize_coordinates(jnp.asarray(coordinates),
                                                                num_bins)), bins)


def test_box_format_round_trip():
  boxes = jnp.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
  np.testing.assert_allclose(xyxy_to_cxcywh(boxes), [[0.3, 0.55, 0.4, 0.7], [0.5, 0.5, 1, 1]],
                             atol=1e-6)
  np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-6)


def _naive_box_loss(pred, target, l1_weight, giou_weight):
  total = 0.0
  for p, t in zip(pred.tolist(), target.tolist()):
    l1 = sum(abs(a - b) for a, b in zip(p, t))
    inter = max(min(p[2], t[2]) - max(p[0], t[0]), 0) * max(min(p[3], t[3]) - max(p[1], t[1]), 0)
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    hull = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
    giou = inter / union - (hull - union) / hull
    total += l1_weight * l1 + giou_weight * (1 - giou)
  return total / len(pred)


def test_box_loss_matches_naive_formula():
  rng = np.random.default_rng(1)
  corners = rng.uniform(0, 1, (2, 6, 2, 2))
  pred, target = np.concatenate([corners.min(-2), corners.max(-2)], -1)
  for weights in [(5.0, 2.0), (1.0, 0.0), (0.0, 1.0)]:
    loss, parts = box_loss(jnp.asarray(pred), jnp.asarray(target), *weights)
    np.testing.assert_allclose(loss, _naive_box_loss(pred, target, *weights), rtol=1e-5)
  np.testing.assert_allclose(parts["l1"], np.abs(pred - target).sum(1).mean(), rtol=1e-5)
  zero, _ = box_loss(jnp.asarray(target), jnp.asarray(target))
  assert abs(float(zero)) < 1e-4


def test_coordinate_example_layout():
  tokenizer = shapeworld_tokenizer()
  ids = tokenizer.encode("the red circle")
  row = coordinate_example(ids, np.array([0.0, 0.26, 0.5, 1.0]), 10, tokenizer, num_bins=4)
  v = tokenizer.vocab_size
  assert row["tokens"].tolist() == [1, *ids, v + 0, v + 1, v + 2, v + 3, 2, 0]
  assert row["prompt_mask"].tolist() == [True] * 4 + [False] * 6
  assert row["prompt"].tolist() == [1, *ids] + [0] * 6 and row["prompt_length"] == 4


@pytest.fixture(scope="module")
def biased_captioner():
  """A tiny Captioner whose lm_head strongly prefers word token 5 everywhere."""
  word_vocab, num_bins = 10, 6
  model = Captioner(vocab_size=word_vocab + num_bins, max_length=8, patch_size=8,
                    vision_width=16, vision_layers=1, vision_heads=2, text_width=16,
                    text_layers=1, text_heads=2, mlp_ratio=1.0)
  images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
  params = nn.unbox(fast_jit(model.init)(jax.random.key(0), images,
                                         jnp.zeros((3, 8), jnp.int32))["params"])
  lm_head = params["text_decoder"]["lm_head"]
  params["text_decoder"]["lm_head"] = {**lm_head, "bias": lm_head["bias"].at[5].set(100.0)}
  return model, params, images, word_vocab, num_bins


def test_coordinate_decoding_yields_only_coordinate_tokens(biased_captioner):
  model, params, images, word_vocab, num_bins = biased_captioner
  prompt = jnp.array([[1, 4, 0], [1, 4, 7], [1, 0, 0]], jnp.int32)
  lengths = jnp.array([2, 3, 1], jnp.int32)

  @fast_jit
  def run(params):
    plain = decoding.greedy(functools.partial(model.decode_step, params),
                            model.init_cache(params, images, 8), prompt, lengths,
                            max_new_tokens=5, eos_id=None).tokens
    restricted = decoding.greedy(
        restrict_to_coordinates(functools.partial(model.decode_step, params), lengths,
                                word_vocab, num_bins),
        model.init_cache(params, images, 8), prompt, lengths, max_new_tokens=5,
        eos_id=None).tokens
    return plain, restricted

  plain, restricted = map(np.asarray, run(params))
  assert (plain == 5).all()  # unrestricted, the biased word wins at every step
  box_steps = restricted[:, :4]
  assert ((box_steps >= word_vocab) & (box_steps < word_vocab + num_bins)).all()
  assert (restricted[:, 4] == 5).all()  # the step after the box is left unrestricted
  boxes = np.asarray(CoordinateDecoder(model, word_vocab, num_bins).tokens_to_boxes(
      jnp.asarray(box_steps)))
  np.testing.assert_allclose(boxes, (box_steps - word_vocab + 0.5) / num_bins, rtol=1e-6)


def test_bad_input_raises_clear_errors():
  tokenizer = shapeworld_tokenizer()
  with pytest.raises(ValueError, match=r"pred_boxes and target_boxes must both be \[B, 4\]"):
    box_loss(jnp.zeros((2, 4)), jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"box must be float \[4\]"):
    coordinate_example([5], np.zeros(3), 10, tokenizer, 8)
  with pytest.raises(ValueError, match="more than context_length=6"):
    coordinate_example([5, 6], np.zeros(4), 6, tokenizer, 8)
  with pytest.raises(ValueError, match="num_bins must be >= 1"):
    quantize_coordinates(np.zeros(4), 0)
  with pytest.raises(ValueError, match=r"must have shape \[\.\.\., 4\]"):
    cxcywh_to_xyxy(jnp.zeros((2, 3)))
  model = Captioner(vocab_size=20, max_length=8)
  with pytest.raises(ValueError, match=r"vocab_size=20 must equal the word vocabulary \(10\) \+ "
                                       r"num_bins \(6\)"):
    CoordinateDecoder(model, 10, 6)
