"""VQAEvaluator against a naive loop over images and questions: a classifier-like predict_fn
on rows of Q questions per image (the image encoded once), and a 'generative' one whose
outputs `decode_fn` maps to answer ids. 9 images in chunks of 2 on 8 devices."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import sharding
from mmjax.train.evaluators import VQAEvaluator

NUM_IMAGES, QUESTIONS, LENGTH, VOCAB, ANSWERS = 9, 5, 4, 8, 6
TYPE_NAMES = ("count", "colour", "shape", "exists", "relation", "size")  # "size" never asked


def predict_answers(params, batch):
  """Answer ids int32 [B, Q] for image [B, 2, 2, 3] and question [B, Q, L]."""
  image_logits = batch["image"].reshape(len(batch["image"]), -1) @ params["image"]  # [B, A]
  question_logits = params["table"][batch["question"]].sum(2)  # [B, Q, A]
  return jnp.argmax(image_logits[:, None] + question_logits, -1).astype(jnp.int32)


def _naive_predictions(images, questions, params):
  out = np.zeros((NUM_IMAGES, QUESTIONS), np.int64)
  for i in range(NUM_IMAGES):
    for q in range(QUESTIONS):
      scores = images[i].reshape(-1) @ params["image"] + params["table"][questions[i, q]].sum(0)
      out[i, q] = np.argmax(scores)
  return out


def _naive_accuracies(predictions, answers, types):
  """Correct / asked over all questions and per type, counted one question at a time."""
  totals, hits = {}, {}
  for p, a, t in zip(predictions.reshape(-1), answers.reshape(-1), types.reshape(-1)):
    for name in ("accuracy", f"accuracy_{TYPE_NAMES[t]}"):
      totals[name] = totals.get(name, 0) + 1
      hits[name] = hits.get(name, 0) + int(p == a)
  return {name: hits[name] / totals[name] for name in totals}


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 2, (NUM_IMAGES, 2, 2, 3)).astype(np.float32)
  questions = rng.integers(0, VOCAB, (NUM_IMAGES, QUESTIONS, LENGTH)).astype(np.int32)
  params = {"image": rng.integers(-2, 3, (12, ANSWERS)).astype(np.float32),
            "table": rng.integers(-2, 3, (VOCAB, ANSWERS)).astype(np.float32)}
  predictions = _naive_predictions(images, questions, params)
  answers = np.where(rng.random(predictions.shape) < 0.5, predictions,
                     rng.integers(0, ANSWERS, predictions.shape)).astype(np.int32)
  types = np.broadcast_to(np.array([0, 1, 2, 3, 4]), answers.shape).copy()
  types[::2, 4] = 2  # types are not tied to the question's slot
  return images, questions, params, answers, types


def test_accuracies_equal_a_naive_loop(setup):
  images, questions, params, answers, types = setup
  evaluator = VQAEvaluator(predict_answers, {"image": images, "question": questions}, answers,
                           2, question_types=types, type_names=TYPE_NAMES)
  got = evaluator.evaluate(params, sharding.make_mesh({"data": 4, "fsdp": 2}))
  want = _naive_accuracies(_naive_predictions(images, questions, params), answers, types)
  assert got == pytest.approx(want, rel=1e-12) and set(got) == set(want)
  assert "accuracy_size" not in got and len(set(want.values())) > 3


def test_flat_rows_with_decode_fn_equal_a_naive_loop(setup):
  images, questions, params, answers, types = setup
  # One question per row, the image repeated; outputs are "tokens" = answer id + 10.
  inputs = {"image": np.repeat(images, QUESTIONS, 0), "question": questions.reshape(-1, 1, LENGTH)}
  evaluator = VQAEvaluator(lambda p, b: predict_answers(p, b)[:, 0] + 10, inputs,
                           answers.reshape(-1), 3, question_types=types.reshape(-1),
                           type_names=TYPE_NAMES, decode_fn=lambda tokens: tokens - 10)
  got = evaluator.evaluate(params, sharding.make_mesh({"data": 8}))
  assert got == pytest.approx(_naive_accuracies(_naive_predictions(images, questions, params),
                                                 answers, types), rel=1e-12)


def test_an_answer_outside_the_list_raises(setup):
  images, questions, params, answers, _ = setup
  evaluator = VQAEvaluator(predict_answers, {"image": images, "question": questions}, answers, 4,
                           decode_fn=lambda ids: np.where(ids == ids[3, 1], -1, ids))
  with pytest.raises(RuntimeError, match=r"predicted answers are not in the answer list"):
    evaluator.predict(params, sharding.make_mesh({"data": 8}))


def test_bad_input_raises_clear_errors(setup):
  images, questions, _, answers, types = setup
  inputs = {"image": images, "question": questions}
  with pytest.raises(ValueError, match=r"arrays must all be \[N, \.\.\.\]"):
    VQAEvaluator(predict_answers, inputs, answers[:-1], 2)
  with pytest.raises(ValueError, match="question_types must have the shape of answers"):
    VQAEvaluator(predict_answers, inputs, answers, 2, question_types=types[:, :4],
                 type_names=TYPE_NAMES)
  with pytest.raises(ValueError, match=r"question_types must index type_names \(2 names\)"):
    VQAEvaluator(predict_answers, inputs, answers, 2, question_types=types,
                 type_names=TYPE_NAMES[:2])
  evaluator = VQAEvaluator(lambda p, b: predict_answers(p, b)[:, :2], inputs, answers, 2)
  with pytest.raises(ValueError, match=r"predicted answers have shape \(9, 2\), expected"):
    evaluator.evaluate(setup[2], sharding.make_mesh({"data": 8}))
