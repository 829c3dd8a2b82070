"""Image captioning (`Captioner`: ViT + causal text decoder) on ShapeWorld.

Each training row is BOS + one of the image's 5 captions + EOS (the caption drawn per
(seed, epoch, index) by `pipeline.image_text_batches`), trained with teacher forcing and
`caption_loss`. `evaluate` captions the first `eval.num_images` test images with jit-compiled
greedy decoding (`eval.num_beams` = 1) or beam search and scores them against all 5 references:
corpus BLEU-4 (sacrebleu's, /100), CIDEr-D, and attribute accuracies from the images'
structured labels (see `attribute_metrics`).
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
from mmjax.data.tokenizer import shapeworld_tokenizer, split_words
from mmjax.models.captioner import Captioner, caption_loss
from mmjax.train import sharding
from mmjax.train.tasks.base import Task
from mmjax.train.tasks.caption_generation import CaptionGeneration
from mmjax.train.tasks.shapeworld_inputs import (check_caption_batch, image_text_train_batches,
                                                 init_image_text, shapeworld_source)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_captioner(config: ml_collections.ConfigDict, vocab_size: int,
                    context_length: int) -> Captioner:
  """`Captioner` from `config.model` (image.*: the ViT, text.*: the decoder, mlp_ratio, dtype)."""
  if config.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
  image, text = config.image, config.text
  return Captioner(vocab_size=vocab_size, max_length=context_length,
                   patch_size=image.patch_size, vision_width=image.width,
                   vision_layers=image.layers, vision_heads=image.heads,
                   text_width=text.width, text_layers=text.layers, text_heads=text.heads,
                   mlp_ratio=config.mlp_ratio, stem_channels=tuple(image.stem_channels),
                   dtype=DTYPES[config.dtype], attention_impl=config.attention_impl,
                   remat=config.remat)


def _first_word_index(words: list[str], vocab: tuple[str, ...]) -> int:
  """Index in `vocab` of the first of `words` that is in it, or -1."""
  for word in words:
    if word in vocab:
      return vocab.index(word)
  return -1


def _names_together(words: list[str], phrase: list[str]) -> bool:
  """Whether `phrase` occurs as consecutive words in `words`."""
  n = len(phrase)
  return any(words[i:i + n] == phrase for i in range(len(words) - n + 1))


def attribute_metrics(captions: list[str], labels: dict[str, np.ndarray]) -> dict[str, float]:
  """How well generated captions name the objects of their images.

  Args:
    captions: N generated captions.
    labels: ShapeWorld structured labels: num_objects int `[N]`; shape, colour, size int
      `[N, M]` (indices into SHAPES / COLOURS / SIZES, -1 padded).
  Returns:
    object_accuracy: mean over images of the fraction of its objects whose size, colour and
      shape words appear together ("small red circle") in the caption.
    For single-object images (if any): shape_accuracy, colour_accuracy, size_accuracy, the
    fraction whose first shape / colour / size word in the caption is the true one, and
    single_object_accuracy, all three right.
  """
  vocabs = {"shape": shapeworld.SHAPES, "colour": shapeworld.COLOURS, "size": shapeworld.SIZES}
  per_image, single = [], {name: [] for name in vocabs}
  for index, caption in enumerate(captions):
    words = split_words(caption)
    count = int(labels["num_objects"][index])
    named = [_names_together(words, [vocabs[name][int(labels[name][index, k])]
                                     for name in ("size", "colour", "shape")])
             for k in range(count)]
    per_image.append(np.mean(named))
    if count == 1:
      for name, vocab in vocabs.items():
        single[name].append(_first_word_index(words, vocab) == int(labels[name][index, 0]))
  results = {"object_accuracy": float(np.mean(per_image))}
  if single["shape"]:
    for name, hits in single.items():
      results[f"{name}_accuracy"] = float(np.mean(hits))
    results["single_object_accuracy"] = float(np.mean(np.logical_and.reduce(
        [single[name] for name in vocabs])))
  return results


class CaptionTask(CaptionGeneration, Task):
  """ShapeWorld captioning; evaluation by BLEU-4, CIDEr-D and attribute accuracies."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    if config.eval.num_beams < 1:
      raise ValueError(f"eval.num_beams must be >= 1 (1 = greedy), got {config.eval.num_beams}")
    if config.eval.num_images < 1:
      raise ValueError(f"eval.num_images must be >= 1, got {config.eval.num_images}")
    self.tokenizer = shapeworld_tokenizer()
    self._model = build_captioner(config.model, self.tokenizer.vocab_size,
                                  config.data.context_length)
    # Caption words + EOS after the BOS prompt fill the decoder's context_length positions.
    self.max_new_tokens = config.data.context_length - 1
    self._eval_cache = None
    self._jitted = {}

  @property
  def model(self) -> Captioner:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int):
    return shapeworld_source(self.config.data, split, length)

  def train_batches(self, process_index: int, process_count: int):
    return image_text_train_batches(self.config, self.tokenizer, process_index, process_count,
                                    caption_choice="random")

  def check_batch(self, batch, step: int) -> None:
    check_caption_batch(batch, step, self.config.data, self.tokenizer)

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    return init_image_text(self._model, rng, self.config.data)

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

    Returns image float32 `[N, H, W, 3]`, text int32 `[5N, L]` (row 5 i + k = caption k of
    image i), references (N lists of 5 str), num_objects int `[N]`, shape/colour/size int `[N, M]`.
    """
    if self._eval_cache is None:
      num_images = self.config.eval.num_images
      source = self._source("test", num_images)
      arrays = pipeline.eval_arrays(source, self.tokenizer, self.config.data.context_length,
                                    num_images)
      items = [source[i] for i in range(num_images)]
      owners = arrays["text_to_image"]
      references = [[c for c, o in zip(arrays["captions"], owners) if o == i]
                    for i in range(num_images)]
      self._eval_cache = dict(
          image=arrays["image"], text=arrays["text"], text_to_image=owners,
          references=references,
          **{key: np.stack([item[key] for item in items])
             for key in ("num_objects", "shape", "colour", "size")})
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
    if "loss" not in self._jitted:
      self._jitted["loss"] = jax.jit(self._loss_sums)
    fn = functools.partial(self._jitted["loss"], params)
    images = data["image"][data["text_to_image"]]
    sums = sharding.map_in_chunks(fn, (images, data["text"]), mesh,
                                  self.config.eval.batch_size)
    return float(sum(s for _, (s, _) in sums) / max(sum(c for _, (_, c) in sums), 1.0))

  def caption_metrics(self, captions: list[str]) -> dict[str, float]:
    """BLEU-4 (corpus, in [0, 1]), CIDEr-D and `attribute_metrics` of the eval images' captions."""
    data = self._eval_data()
    references = data["references"]
    results = {"bleu4": metrics.corpus_bleu(captions, references) / 100.0,
               "cider_d": metrics.cider_d(captions, references)}
    results.update(attribute_metrics(captions, data))
    return results

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    data = self._eval_data()
    captions = self.generate_captions(params, data["image"], mesh)
    self.last_captions = captions
    return {"eval_loss": self.eval_loss(params, mesh), **self.caption_metrics(captions)}

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
