"""Visual question answering: accuracy over a closed answer list, overall and per question type."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.train.evaluators.chunked import check_batch_size, check_rows, predict_in_chunks


class VQAEvaluator:
  """Exact-match accuracy of predicted answer indices.

  The model is seen through `predict_fn(params, batch) -> outputs [B, ...]` (jittable), where
  `batch` maps the names of `inputs` to their rows `[B, ...]`. A row may hold one question or
  all Q questions of one image (`answers` `[N, Q]`: the image is then encoded once). The host
  `decode_fn(outputs [N, ...]) -> answer ids` turns outputs into indices into the answer list
  (-1: no answer; default: the outputs are the indices).

  Metrics: `accuracy` over all questions and `accuracy_<type>` per name in `type_names` that
  has questions. The last evaluation's per-question outcomes (bool, the shape of `answers`)
  are kept in `last_correct`, for paired comparisons on the same questions, and its predicted
  answer indices in `last_predictions`.
  """

  def __init__(self, predict_fn: Callable, inputs: Mapping[str, np.ndarray],
               answers: np.ndarray, batch_size: int, *, question_types: np.ndarray | None = None,
               type_names: Sequence[str] = (), decode_fn: Callable | None = None):
    """
    Args:
      inputs: host arrays `[N, ...]` (e.g. image `[N, H, W, 3]`, question `[N, Q, L]`).
      answers: host int `[N]` or `[N, Q]`, the true answer index of each question.
      batch_size: rows per device call.
      question_types: host int, the shape of `answers`: index into `type_names`.
      type_names: the question types' names.
    """
    if not inputs:
      raise ValueError("inputs must name at least one array for predict_fn's batch")
    answers = np.asarray(answers)
    check_rows({**inputs, "answers": answers})
    if not np.issubdtype(answers.dtype, np.integer):
      raise ValueError(f"answers must be int answer indices, got {answers.dtype}")
    if question_types is not None:
      question_types = np.asarray(question_types)
      if question_types.shape != answers.shape:
        raise ValueError(f"question_types must have the shape of answers {answers.shape}, got "
                         f"{question_types.shape}")
      if question_types.min() < 0 or question_types.max() >= len(type_names):
        raise ValueError(f"question_types must index type_names ({len(type_names)} names), got "
                         f"values in [{question_types.min()}, {question_types.max()}]")
    self.keys = tuple(inputs)
    self.inputs = tuple(inputs[key] for key in self.keys)
    self.answers, self.question_types = answers, question_types
    self.type_names, self.batch_size = tuple(type_names), check_batch_size(batch_size)
    self.decode_fn = decode_fn
    keys = self.keys
    self._predict = jax.jit(lambda params, *arrays: predict_fn(params, dict(zip(keys, arrays))))
    self.last_correct: np.ndarray | None = None
    self.last_predictions: np.ndarray | None = None

  def predict(self, params: Any, mesh: Mesh) -> np.ndarray:
    """Predicted answer indices, the shape of `answers` (host).

    Raises RuntimeError if an answer is -1 (a decoded answer outside the list)."""
    outputs = predict_in_chunks(self._predict, params, self.inputs, mesh, self.batch_size)
    predictions = np.asarray(self.decode_fn(outputs) if self.decode_fn else outputs)
    if predictions.shape != self.answers.shape:
      raise ValueError(f"predicted answers have shape {predictions.shape}, expected the shape of "
                       f"answers {self.answers.shape}")
    if (predictions < 0).any():
      bad = np.argwhere(predictions < 0)
      raise RuntimeError(f"{len(bad)} predicted answers are not in the answer list (rows "
                         f"{bad[:10].tolist()}): the decoding constraint is broken")
    return predictions

  def evaluate(self, params: Any, mesh: Mesh) -> dict[str, float]:
    self.last_predictions = self.predict(params, mesh)
    correct = self.last_predictions == self.answers
    self.last_correct = correct
    results = {"accuracy": float(correct.mean())}
    if self.question_types is not None:
      for index, name in enumerate(self.type_names):
        rows = self.question_types == index
        if rows.any():
          results[f"accuracy_{name}"] = float(correct[rows].mean())
    return results
