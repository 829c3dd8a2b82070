"""Visual grounding on ShapeWorld: box regression or coordinate tokens for a referring expression.

The model (`config.model.name`, see `configs/grounding_shapeworld.py`) is the head:
  "regression_grounder" (the regression head): `RegressionGrounder` (ViT -> image-grounded
    expression encoder -> MLP -> sigmoid (cx, cy, w, h)), trained with `box_loss`
    (loss.l1_weight * L1 + loss.giou_weight * (1 - GIoU)).
  "captioner" (the tokens head): `Captioner` over the word vocabulary + `num_bins` coordinate
    tokens, trained on BOS + expression + 4 coordinate tokens + EOS with the prompt masked out
    of the loss; boxes by greedy decoding restricted to coordinate tokens (`CoordinateDecoder`).
  "unified_decoder" (the tokens head on the LLaVA-style `UnifiedDecoder`: image tokens first,
    then the same rows, in one causal transformer).
  The tokens heads' coordinate targets are one-hot, or Gaussians of `bin_sigma` bins
  (`mmjax.losses.coordinate_tokens`).

Every row is an image's `referring` expression and its `referring_box` (x0, y0, x1, y1) in
[0, 1]. `evaluate` predicts the boxes of the first `eval.num_examples` test images and reports
"acc@0.5" (fraction with IoU >= 0.5), "acc@0.75" and "mean_iou".
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import metrics
from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import (check_images, check_tokens, example_train_batches,
                                          image_text_init_inputs, shapeworld_source,
                                          text_tower_fields)
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.losses import caption_loss
from mmjax.models import build_model
from mmjax.models.grounding import NUM_BOX_TOKENS, CoordinateDecoder, box_loss, coordinate_example
from mmjax.train.evaluators import GroundingEvaluator
from mmjax.train.tasks.base import Task

# model.name -> head; the unified decoder has the Captioner's decoding interface.
HEADS = {"regression_grounder": "regression", "captioner": "tokens",
         "unified_decoder": "tokens"}
IOU_THRESHOLDS = (0.5, 0.75)


def checked_bin_sigma(config: ml_collections.ConfigDict) -> float:
  """`config.bin_sigma` (0 when absent: one-hot coordinate targets), checked to be >= 0."""
  sigma = float(config.get("bin_sigma", 0.0))
  if sigma < 0:
    raise ValueError(f"bin_sigma (the coordinate targets' Gaussian width in bins) must be >= 0, "
                     f"got {sigma}")
  return sigma


class _LoadReferring:
  """(stream position, source index) -> one grounding row, for `example_batches`.

  Rows: image float32 `[H, W, 3]` in [0, 1], expression int32 `[L]` (BOS + expression + EOS),
  box float32 `[4]`; the tokens head adds tokens, prompt_mask, prompt, prompt_length (see
  `coordinate_example`).
  """

  def __init__(self, source, tokenizer, context_length: int, head: str, num_bins: int):
    self.source, self.tokenizer, self.context_length = source, tokenizer, context_length
    self.head, self.num_bins = head, num_bins
    self.image_shape = (source.image_size, source.image_size, 3)

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    del position  # One expression per image: rows do not depend on the epoch.
    item = self.source[index]
    image = pipeline.check_image(item["image"], index, self.image_shape)
    return {"image": image.astype(np.float32) / np.float32(255),
            **self.encode(item["referring"], item["referring_box"], index)}

  def encode(self, expression: str, box, index: int) -> dict[str, np.ndarray]:
    """The text and box fields of one (expression, box) pair (everything but the image)."""
    box = np.asarray(box, np.float32)
    if box.shape != (4,) or not np.all((box >= 0) & (box <= 1)) or np.any(box[2:] < box[:2]):
      raise ValueError(f"example {index}: referring_box must be float [4] (x0, y0, x1, y1) in "
                       f"[0, 1] with x0 <= x1, y0 <= y1; got {box.tolist()}")
    ids = self.tokenizer.encode(expression)
    if len(ids) + 2 > self.context_length:
      raise ValueError(f"example {index}: expression {expression!r} has {len(ids)} tokens; with "
                       f"BOS and EOS that exceeds data.context_length={self.context_length}")
    row = {"expression": self.tokenizer.encode_batch([expression], self.context_length)[0],
           "box": box}
    if self.head == "tokens":
      row.update(coordinate_example(ids, box, self.context_length, self.tokenizer, self.num_bins))
    return row


class GroundingTask(Task):
  """ShapeWorld referring-expression grounding with the regression ("regression_grounder") or
  tokens ("captioner") head."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.head = HEADS.get(config.model.get("name"))
    if self.head is None:
      raise ValueError(f"model.name must be one of {sorted(HEADS)} (the regression or the tokens "
                       f"head), got {config.model.get('name')!r}")
    if config.eval.num_examples <= 0:
      raise ValueError(f"eval.num_examples must be positive, got {config.eval.num_examples}")
    self.tokenizer = shapeworld_tokenizer()
    length = config.data.context_length
    if self.head == "tokens":
      self.num_bins = int(config.num_bins)
      if self.num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
      self.bin_sigma = checked_bin_sigma(config)
      self._model = build_model(config.model, vocab_size=self.tokenizer.vocab_size + self.num_bins,
                                max_length=length)
    else:
      self.num_bins = 0  # no coordinate tokens
      self._model = build_model(config.model,
                                text_encoder=text_tower_fields(self.tokenizer, length))
    self.decoder = (CoordinateDecoder(self._model, self.tokenizer.vocab_size, self.num_bins,
                                      self.tokenizer.pad_id) if self.head == "tokens" else None)
    self._eval_cache = None
    self._evaluators = None

  @property
  def model(self):
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int):
    return shapeworld_source(self.config.data, split, length)

  def _loader(self, source) -> _LoadReferring:
    return _LoadReferring(source, self.tokenizer, self.config.data.context_length, self.head,
                          self.num_bins)

  def train_batches(self, process_index: int, process_count: int):
    return example_train_batches(self.config, self._loader, process_index, process_count)

  def check_batch(self, batch, step: int) -> None:
    data = self.config.data
    image = check_images(batch, step, data.image_size)
    box = batch["box"]
    if box.shape != (image.shape[0], 4):
      raise ValueError(f"batch at step {step}: box has shape {box.shape}, expected "
                       f"[batch={image.shape[0]}, 4]")
    check_tokens(batch, step, "tokens" if self.head == "tokens" else "expression",
                 data.context_length, len(image))

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    return self._model.init(rng, *image_text_init_inputs(self.config.data))["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # No dropout.
    if self.head == "regression":
      boxes = self._model.apply({"params": params}, batch["image"], batch["expression"])
      loss, parts = box_loss(boxes, batch["box"], self.config.loss.l1_weight,
                             self.config.loss.giou_weight)
      iou = metrics.matched_box_iou(boxes, batch["box"])
      return loss, {**parts, "iou": iou.mean()}
    tokens = batch["tokens"]
    logits = self._model.apply({"params": params}, batch["image"], tokens)
    loss = caption_loss(logits, tokens, self.tokenizer.pad_id, batch["prompt_mask"],
                        self.tokenizer.vocab_size, self.num_bins, self.bin_sigma)
    # Teacher-forced argmax at the 4 box steps (over the whole vocabulary).
    steps = batch["prompt_length"][:, None] - 1 + jnp.arange(NUM_BOX_TOKENS)   # [B, 4]
    predicted = jnp.take_along_axis(jnp.argmax(logits, -1), steps, axis=1)
    target = jnp.take_along_axis(tokens, steps + 1, axis=1)
    return loss, {"coordinate_accuracy": (predicted == target).astype(jnp.float32).mean()}

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self) -> dict[str, np.ndarray]:
    """The first `eval.num_examples` test images with their expression and box, built once."""
    if self._eval_cache is None:
      num = self.config.eval.num_examples
      source = self._source("test", num)
      loader = self._loader(source)
      rows = [loader(index, index) for index in range(num)]
      self._eval_cache = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    return self._eval_cache

  def evaluators(self) -> dict[str, Any]:
    """{"grounding": GroundingEvaluator} of the eval examples, built on first use."""
    if self._evaluators is None:
      data = self._eval_data()
      if self.head == "tokens":  # Leave the decoder's last positions to the 4 box tokens.
        width = self.config.data.context_length - NUM_BOX_TOKENS
        inputs = {"image": data["image"], "prompt": data["prompt"][:, :width],
                  "prompt_length": data["prompt_length"]}
      else:
        inputs = {"image": data["image"], "expression": data["expression"]}
      self._evaluators = {"grounding": GroundingEvaluator(
          self._predict_boxes, inputs, data["box"], self.config.eval.batch_size,
          thresholds=IOU_THRESHOLDS)}
    return self._evaluators

  def _predict_boxes(self, params, batch) -> jax.Array:
    """Boxes float32 `[B, 4]` (x0, y0, x1, y1) for images `[B, H, W, 3]` and their expressions
    (regression head) or prompts with prompt_length (tokens head)."""
    if self.head == "regression":
      return self._model.apply({"params": params}, batch["image"], batch["expression"])
    # Padding rows have prompt length 0: decode them from BOS only.
    return self.decoder.decode_boxes(params, batch["image"], batch["prompt"],
                                     jnp.maximum(batch["prompt_length"], 1))

  def predict(self, params, mesh: Mesh) -> np.ndarray:
    """Predicted boxes float32 `[N, 4]` (x0, y0, x1, y1) of the eval examples (host)."""
    return self.evaluators()["grounding"].predict(params, mesh)

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    return self.evaluators()["grounding"].evaluate(params, mesh)
