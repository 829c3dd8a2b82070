"""Captioning: generated captions scored by corpus BLEU-4, CIDEr-D and attribute accuracies."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mmjax import metrics
from mmjax.train.evaluators.chunked import check_batch_size, check_rows, predict_in_chunks

AttributeMetrics = Callable[[list[str], Mapping[str, np.ndarray]], dict[str, float]]


class CaptioningEvaluator:
  """Captions from `generate_fn(params, images [B, ...], *extra_inputs) -> token ids int [B, T]`
  (jittable; EOS then padding), decoded by `tokenizer.decode_batch`, against references.

  Metrics: `bleu4` (sacrebleu corpus BLEU / 100, in [0, 1]), `cider_d`, and with
  `attribute_labels` whatever `attribute_metrics(captions, attribute_labels)` returns (e.g.
  ShapeWorld's object / shape / colour / size accuracies). The last captions are kept in
  `last_captions`.
  """

  def __init__(self, generate_fn: Callable, tokenizer: Any, images: np.ndarray,
               references: Sequence[Sequence[str]], batch_size: int, *,
               attribute_labels: Mapping[str, np.ndarray] | None = None,
               attribute_metrics: AttributeMetrics | None = None,
               extra_inputs: Sequence[np.ndarray] = ()):
    """
    Args:
      tokenizer: has `decode_batch(int [N, T]) -> N str`.
      images: host `[N, ...]`.
      references: N lists of reference captions (at least one each).
      batch_size: images per device call.
      attribute_labels: per-image structured labels (each `[N, ...]`), for attribute_metrics.
      attribute_metrics: `(captions, attribute_labels) -> dict[str, float]`.
      extra_inputs: more host arrays `[N, ...]` chunked with the images (a few-shot model's
        prompts and their lengths).
    """
    num_images = check_rows({"images": images})
    if len(references) != num_images:
      raise ValueError(f"references must hold one list per image ({num_images}), got "
                       f"{len(references)}")
    empty = [i for i, refs in enumerate(references) if isinstance(refs, str) or not refs]
    if empty:
      raise ValueError(f"each image needs a list of at least one reference caption; images "
                       f"{empty[:10]} have none (or a bare str)")
    if (attribute_labels is None) != (attribute_metrics is None):
      raise ValueError("attribute_labels and attribute_metrics go together: pass both or neither")
    if attribute_labels is not None:
      check_rows(dict(attribute_labels), num_images)
    if extra_inputs:
      check_rows({f"extra_inputs[{i}]": x for i, x in enumerate(extra_inputs)}, num_images)
    self.extra_inputs = tuple(extra_inputs)
    self.images, self.references = images, [list(refs) for refs in references]
    self.tokenizer, self.batch_size = tokenizer, check_batch_size(batch_size)
    self.attribute_labels, self.attribute_metrics = attribute_labels, attribute_metrics
    self._generate = jax.jit(generate_fn)
    self.last_captions: list[str] | None = None

  def generate(self, params: Any, images: np.ndarray, mesh: Mesh, *extra_inputs) -> list[str]:
    """Decoded captions (n str) of host images `[n, ...]` (and the `[n, ...]` extra inputs)."""
    tokens = predict_in_chunks(self._generate, params, (images, *extra_inputs), mesh,
                               self.batch_size)
    return self.tokenizer.decode_batch(tokens)

  def evaluate(self, params: Any, mesh: Mesh) -> dict[str, float]:
    captions = self.generate(params, self.images, mesh, *self.extra_inputs)
    self.last_captions = captions
    results = {"bleu4": metrics.corpus_bleu(captions, self.references) / 100.0,
               "cider_d": metrics.cider_d(captions, self.references)}
    if self.attribute_metrics is not None:
      results.update(self.attribute_metrics(captions, self.attribute_labels))
    return results
