"""VQA models: answer vocabulary, classifier shapes and errors, generative constrained answering
against `sequence_log_probs` and a teacher-forced recompute."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import shapeworld
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.losses import caption_loss
from mmjax.models.captioner import Captioner
from mmjax.models.vqa import (SHAPEWORLD_ANSWERS, GenerativeAnswerer, VQAClassifier,
                              generative_example)
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import VisionTransformer

fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
TOKENIZER = shapeworld_tokenizer()
LENGTH = 18


def random_params(abstract, seed: int = 0, scale: float = 0.3):
  """Normal(0, scale) values for every parameter of an abstract (eval_shape) tree.

  Saves compiling `init`, and gives larger logits than the 0.02-scale init, so that answer
  choices are not near-ties.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), abstract)


def _questions(count: int, offset: int = 0):
  """(images float32 [count, 16, 16, 3], questions [5 count], answers [5 count]) of ShapeWorld."""
  source = shapeworld.ShapeWorld("test", offset + count, image_size=16)
  items = [source[i] for i in range(offset, offset + count)]
  images = np.stack([item["image"] for item in items]).astype(np.float32) / 255
  return (images, [q for item in items for q in item["questions"]],
          [a for item in items for a in item["answers"]])


def test_answer_vocabulary_covers_shapeworld_and_is_distinct():
  _, _, answers = _questions(40)
  assert set(answers) <= set(SHAPEWORLD_ANSWERS)
  assert len(set(SHAPEWORLD_ANSWERS)) == len(SHAPEWORLD_ANSWERS)
  for word in ("yes", "no", "red", "circle", "small", "three"):
    assert word in SHAPEWORLD_ANSWERS
  assert all(TOKENIZER.unk_id not in TOKENIZER.encode(a) for a in SHAPEWORLD_ANSWERS)


def test_classifier_shapes_and_bad_input():
  model = VQAClassifier(
      VisionTransformer(patch_size=4, width=16, num_layers=1, num_heads=2),
      TextTransformer(vocab_size=TOKENIZER.vocab_size, context_length=LENGTH, width=24,
                      num_layers=1, num_heads=2, causal=False, pool="first",
                      cross_attention=True),
      num_answers=len(SHAPEWORLD_ANSWERS), hidden_dim=32)
  images, questions, _ = _questions(2)
  tokens = TOKENIZER.encode_batch(questions[:2], LENGTH)
  # Abstract evaluation only (no compilation): the task tests run the real forward pass.
  params = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
  apply = lambda params, *args, **kwargs: model.apply({"params": params}, *args, **kwargs)
  logits = jax.eval_shape(apply, params, images, tokens)
  assert logits.shape == (2, len(SHAPEWORLD_ANSWERS)) and logits.dtype == jnp.float32
  image_tokens = jax.eval_shape(functools.partial(apply, method=model.encode_image), params,
                                images)
  assert image_tokens.shape == (2, 1 + (16 // 4) ** 2, 16)
  check = lambda *args: jax.eval_shape(apply, params, *args)
  with pytest.raises(ValueError, match=r"images must be float \[B, H, W, 3\]"):
    check(images[..., :1], tokens)
  with pytest.raises(ValueError, match=r"images must be float \[B, H, W, 3\]"):
    check(images[0], tokens)
  with pytest.raises(ValueError, match="questions must be int"):
    check(images, tokens[:1])


def test_generative_example_layout_and_loss_counts_only_the_answer():
  question, answer = TOKENIZER.encode("what colour is the circle?"), TOKENIZER.encode("red")
  row = generative_example(question, answer, LENGTH, TOKENIZER)
  n = len(question)
  assert row["tokens"][:n + 3].tolist() == [TOKENIZER.bos_id, *question, *answer, TOKENIZER.eos_id]
  assert (row["tokens"][n + 3:] == TOKENIZER.pad_id).all()
  assert row["prompt_mask"].tolist() == [True] * (n + 1) + [False] * (LENGTH - n - 1)
  assert row["prompt_length"] == n + 1 and row["prompt"][:n + 1].tolist() == row["tokens"][:n + 1].tolist()
  # caption_loss with the prompt masked = mean NLL of the answer token and EOS only.
  logits = np.random.default_rng(0).normal(size=(1, LENGTH, TOKENIZER.vocab_size)).astype(np.float32)
  log_p = jax.nn.log_softmax(logits[0], -1)
  expected = -(log_p[n, answer[0]] + log_p[n + 1, TOKENIZER.eos_id]) / 2
  np.testing.assert_allclose(caption_loss(logits, row["tokens"][None], TOKENIZER.pad_id,
                                          row["prompt_mask"][None]), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="context_length"):
    generative_example(question, answer, n + 2, TOKENIZER)


def test_constrained_greedy_answers_from_the_list_and_matches_likelihood_ranking():
  model = Captioner(vocab_size=TOKENIZER.vocab_size, max_length=LENGTH, patch_size=8,
                    vision_width=16, vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                    text_heads=2)
  answerer = GenerativeAnswerer(model, SHAPEWORLD_ANSWERS, TOKENIZER)
  images, questions, _ = _questions(3)  # 3 images x 5 questions
  rows = [generative_example(TOKENIZER.encode(q), TOKENIZER.encode("yes"), LENGTH, TOKENIZER)
          for q in questions]
  width = LENGTH - answerer.max_new_tokens
  prompt = np.stack([r["prompt"][:width] for r in rows])
  lengths = np.array([r["prompt_length"] for r in rows], np.int32)
  params = random_params(jax.eval_shape(model.init, jax.random.key(1), images, prompt[:3])["params"])

  @fast_jit
  def run(params):
    decoded = answerer.decode(params, images, prompt, lengths, questions_per_image=5)
    ranked = answerer.answer_log_probs(params, images, prompt, lengths, questions_per_image=5)
    forward = model.apply({"params": params}, jnp.repeat(images, 5, axis=0), prompt)
    return decoded.tokens, ranked, forward

  tokens, ranked, forward = (np.asarray(x) for x in run(params))
  chosen = answerer.answer_indices(tokens)
  assert (chosen >= 0).all(), tokens  # every decoded answer is in the list, followed by EOS
  np.testing.assert_array_equal(chosen, ranked.argmax(1))
  # Independent reference: teacher-forced logits at the last prompt token over answer ids.
  answer_ids = answerer.answer_tokens[:, 0]
  next_logits = forward[np.arange(len(prompt)), lengths - 1]
  reference = jax.nn.log_softmax(next_logits, -1)[:, answer_ids]
  np.testing.assert_allclose(ranked, reference, atol=1e-4)
  np.testing.assert_array_equal(chosen, np.asarray(reference).argmax(1))
  # The constraint matters: unconstrained, a random model mostly picks non-answer tokens.
  assert not np.isin(next_logits.argmax(1), answer_ids).all()
