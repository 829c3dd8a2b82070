"""Image captioning (`Captioner`: ViT + causal text decoder) on ShapeWorld.

Each training row is BOS + one of the image's 5 captions + EOS (the caption drawn per
(seed, epoch, index) by `pipeline.image_text_batches`), trained with teacher forcing and
`caption_loss`. `evaluate` captions the first `eval.num_images` test images with jit-compiled
greedy decoding (`eval.num_beams` = 1) or beam search and scores them against all 5 references:
corpus BLEU-4 (sacrebleu's, /100), CIDEr-D, and attribute accuracies from the images'
structured labels (`metrics.attribute_metrics`), through `CaptioningEvaluator`.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import decoding, metrics
from mmjax.data import pipeline, shapeworld
from mmjax.data.shapeworld_inputs import (check_caption_batch, image_text_init_inputs,
                                          image_text_train_batches)
from mmjax.data.sources import image_text_source, task_tokenizer
from mmjax.data.tokenizer import split_words
from mmjax.losses import caption_loss
from mmjax.models import build_model
from mmjax.models.captioner import Captioner
from mmjax.train import sharding
from mmjax.train.evaluators import CaptioningEvaluator
from mmjax.train.tasks.base import Task

# ShapeWorld's attribute words in the order a caption says them ("a small red circle").
ATTRIBUTE_VOCABULARIES = {"size": shapeworld.SIZES, "colour": shapeworld.COLOURS,
                          "shape": shapeworld.SHAPES}
ATTRIBUTE_LABELS = ("num_objects", "shape", "colour", "size")  # eval data keys they read


def shapeworld_attribute_metrics(captions: list[str],
                                 labels: dict[str, np.ndarray]) -> dict[str, float]:
  """`metrics.attribute_metrics` of N captions against labels (num_objects `[N]`, shape /
  colour / size `[N, M]`), the words said in `ATTRIBUTE_VOCABULARIES` order."""
  return metrics.attribute_metrics([split_words(caption) for caption in captions], labels,
                                   ATTRIBUTE_VOCABULARIES)


class CaptionTask(Task):
  """ShapeWorld captioning; evaluation by BLEU-4, CIDEr-D and attribute accuracies."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    if config.eval.num_beams < 1:
      raise ValueError(f"eval.num_beams must be >= 1 (1 = greedy), got {config.eval.num_beams}")
    if config.eval.num_images < 1:
      raise ValueError(f"eval.num_images must be >= 1, got {config.eval.num_images}")
    self.tokenizer = task_tokenizer(config.data)
    self._model = build_model(config.model, vocab_size=self.tokenizer.vocab_size,
                              max_length=config.data.context_length)
    # Caption words + EOS after the BOS prompt fill the decoder's context_length positions.
    self.max_new_tokens = config.data.context_length - 1
    self._eval_cache = None
    self._evaluators = None
    self._loss_sums_fn = jax.jit(self._loss_sums)

  @property
  def model(self) -> Captioner:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int):
    return image_text_source(self.config.data, split, length)

  def train_batches(self, process_index: int, process_count: int):
    return image_text_train_batches(self.config, self.tokenizer, process_index, process_count,
                                    caption_choice="random")

  def check_batch(self, batch, step: int) -> None:
    check_caption_batch(batch, step, self.config.data, self.tokenizer)

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    return self._model.init(rng, *image_text_init_inputs(self.config.data))["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # No dropout.
    text = batch["text"]
    logits = self._model.apply({"params": params}, batch["image"], text)
    loss = caption_loss(logits, text, self.tokenizer.pad_id)
    targets = text[:, 1:]
    weights = (targets != self.tokenizer.pad_id).astype(jnp.float32)
    hits = (jnp.argmax(logits[:, :-1], -1) == targets).astype(jnp.float32)
    return loss, {"token_accuracy": (hits * weights).sum() / jnp.maximum(weights.sum(), 1.0)}

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self) -> dict[str, Any]:
    """The first `eval.num_images` test images with all captions and labels, built once.

    Returns image float32 `[N, H, W, 3]`, text int32 `[T, L]` (T captions; ShapeWorld: row
    5 i + k = caption k of image i), text_to_image int `[T]`, references (N lists of str) and,
    for ShapeWorld, num_objects int `[N]`, shape/colour/size int `[N, M]`.
    """
    if self._eval_cache is None:
      source = self._source("test", self.config.eval.num_images)
      num_images = len(source)
      arrays = pipeline.eval_arrays(source, self.tokenizer, self.config.data.context_length,
                                    num_images)
      owners = arrays["text_to_image"]
      references = [[c for c, o in zip(arrays["captions"], owners) if o == i]
                    for i in range(num_images)]
      attributes = {}
      if self.config.data.name == "shapeworld":
        items = [source[i] for i in range(num_images)]
        attributes = {key: np.stack([item[key] for item in items]) for key in ATTRIBUTE_LABELS}
      self._eval_cache = dict(image=arrays["image"], text=arrays["text"], text_to_image=owners,
                              references=references, **attributes)
    return self._eval_cache

  def _generate(self, params, images: jax.Array) -> jax.Array:
    """Caption tokens int32 `[B, max_new_tokens]` (EOS then padding) for images `[B, H, W, 3]`."""
    cfg, tok = self.config.eval, self.tokenizer
    batch = images.shape[0]
    cache = self._model.init_cache(params, images, 1 + self.max_new_tokens)
    prompt = jnp.full((batch, 1), tok.bos_id, jnp.int32)
    step_fn = functools.partial(self._model.decode_step, params)
    common = dict(max_new_tokens=self.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id)
    if cfg.num_beams == 1:
      return decoding.greedy(step_fn, cache, prompt, **common).tokens
    out = decoding.beam_search(step_fn, cache, prompt, num_beams=cfg.num_beams,
                               length_penalty=cfg.length_penalty, **common)
    return out.tokens[:, 0]

  def _loss_sums(self, params, images, text):
    """(summed token NLL, target count) of `text` `[B, L]` given `images` `[B, H, W, 3]`."""
    logits = self._model.apply({"params": params}, images, text)
    count = (text[:, 1:] != self.tokenizer.pad_id).sum().astype(jnp.float32)
    return caption_loss(logits, text, self.tokenizer.pad_id) * count, count

  def eval_loss(self, params, mesh: Mesh) -> float:
    """Mean next-token NLL over all 5 reference captions of every eval image."""
    data = self._eval_data()
    fn = functools.partial(self._loss_sums_fn, params)
    images = data["image"][data["text_to_image"]]
    sums = sharding.map_in_chunks(fn, (images, data["text"]), mesh,
                                  self.config.eval.batch_size)
    return float(sum(s for _, (s, _) in sums) / max(sum(c for _, (_, c) in sums), 1.0))

  def evaluators(self) -> dict[str, Any]:
    """{"captioning": CaptioningEvaluator} of the eval images (with ShapeWorld's attribute
    labels, for its attribute accuracies), built on first use."""
    if self._evaluators is None:
      data = self._eval_data()
      attributes = {}
      if self.config.data.name == "shapeworld":
        attributes = dict(attribute_labels={key: data[key] for key in ATTRIBUTE_LABELS},
                          attribute_metrics=shapeworld_attribute_metrics)
      self._evaluators = {"captioning": CaptioningEvaluator(
          self._generate, self.tokenizer, data["image"], data["references"],
          self.config.eval.batch_size, **attributes)}
    return self._evaluators

  def generate_captions(self, params, images: np.ndarray, mesh: Mesh) -> list[str]:
    """Decoded captions (N str) of host images float32 `[N, H, W, 3]` in [0, 1]."""
    return self.evaluators()["captioning"].generate(params, images, mesh)

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    """eval_loss, then the captions' bleu4, cider_d and attribute accuracies."""
    results = {"eval_loss": self.eval_loss(params, mesh)}
    for evaluator in self.evaluators().values():
      results.update(evaluator.evaluate(params, mesh))
    return results

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    from mmjax.train import plots
    data = self._eval_data()
    count = min(8, len(data["image"]))
    captions = self.generate_captions(params, data["image"][:count], mesh)
    if jax.process_index() != 0:
      return []
    rows = [[f"model: {caption}", f"ref:   {refs[0]}"]
            for caption, refs in zip(captions, data["references"][:count])]
    return [plots.loss_curve(workdir),
            plots.retrieval_grid(workdir / "captions.png", data["image"][:count], rows)]
