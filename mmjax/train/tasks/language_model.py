"""A decoder-only language model on ShapeWorld's text: the LM that multimodal decoders build on.

The model (`config.model`, see `configs/lm_shapeworld.py`) is a causal `TextDecoder` with no
cross-attention (registry name "text_decoder"), so its parameters load into the unified
decoder's and Flamingo's LM slots ("token_embed", "pos_embed", "transformer", "lm_head").

Each training row is BOS + one text of an image + EOS, the text drawn per (seed, epoch, index)
from the image's `TEXT_KINDS`: its 5 captions, its 5 questions each followed by its answer
("how many shapes are there? two") and its referring expression. With `data.pack=True` a row
is packed: BOS t_1 EOS BOS t_2 EOS ... with whole texts of further images drawn from the same
rng until the next would not fit, so every one of the `context_length` positions trains (what
Flamingo's interleaved rows need of their frozen LM: many chunks in one sequence). `evaluate` scores every text
of the first `eval.num_images` test images: mean next-token NLL ("eval_loss"), its perplexity
and next-token accuracy, overall and per kind.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import check_tokens, example_train_batches, shapeworld_source
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.models import build_model
from mmjax.train import sharding
from mmjax.train.tasks.base import Task

TEXT_KINDS = ("caption", "question_answer", "referring")
TEXTS_PER_IMAGE = 11  # 5 captions + 5 question-answer pairs + 1 referring expression


def image_texts(item: dict) -> list[tuple[str, str]]:
  """(kind, text) of every text of one ShapeWorld item, in a fixed order."""
  texts = [("caption", c) for c in item["captions"]]
  texts += [("question_answer", f"{q} {a}") for q, a in zip(item["questions"], item["answers"])]
  texts.append(("referring", item["referring"]))
  if len(texts) != TEXTS_PER_IMAGE:
    raise ValueError(f"a ShapeWorld item should give {TEXTS_PER_IMAGE} texts (5 captions, 5 "
                     f"questions, 1 referring expression), got {len(texts)}")
  return texts


class _LoadText:
  """(stream position, source index) -> {"text": int32 `[L]`}: one of the image's texts, or with
  `pack` that text followed by texts of other images drawn by the same rng (see module doc)."""

  def __init__(self, source, tokenizer, context_length: int, seed: int, pack: bool = False):
    self.source, self.tokenizer, self.context_length = source, tokenizer, context_length
    self.seed, self.pack = seed, pack

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    rng = pipeline.example_rng(self.seed, position // len(self.source), index, "text")

    def draw(item_index: int) -> str:
      texts = image_texts(self.source[item_index])
      return texts[int(rng.integers(len(texts)))][1]

    first = encode_whole(self.tokenizer, draw(index), self.context_length)
    if not self.pack:
      return {"text": first}
    return {"text": pack_texts(self.tokenizer, first, self.context_length,
                               lambda: draw(int(rng.integers(len(self.source)))))}


def pack_texts(tokenizer, first: np.ndarray, context_length: int, next_text) -> np.ndarray:
  """int32 `[L]`: the encoded row `first` (BOS t EOS, pad-filled), then BOS t EOS of each
  `next_text()` while it fits; the first text that does not fit ends the row (pad after)."""
  row = [int(t) for t in first if t != tokenizer.pad_id]
  while True:
    ids = [tokenizer.bos_id, *tokenizer.encode(next_text()), tokenizer.eos_id]
    if len(row) + len(ids) > context_length:
      break
    row += ids
  out = np.full(context_length, tokenizer.pad_id, np.int32)
  out[:len(row)] = row
  return out


def encode_whole(tokenizer, text: str, context_length: int) -> np.ndarray:
  """BOS + text + EOS, pad-filled to `context_length`; ValueError if it does not fit (an LM row
  cut before its EOS would teach the model to stop nowhere)."""
  ids = tokenizer.encode(text)
  if len(ids) + 2 > context_length:
    raise ValueError(f"text {text!r} has {len(ids)} tokens; with BOS and EOS that exceeds "
                     f"data.context_length={context_length}")
  return tokenizer.encode_batch([text], context_length)[0]


class LanguageModelTask(Task):
  """Next-token prediction on ShapeWorld text with a decoder-only `TextDecoder`."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    if config.data.get("name", "shapeworld") != "shapeworld":
      raise ValueError(f"the language_model task reads ShapeWorld's captions, questions and "
                       f"referring expressions; data.name must be 'shapeworld', got "
                       f"{config.data.name!r}")
    if config.eval.num_images < 1:
      raise ValueError(f"eval.num_images must be >= 1, got {config.eval.num_images}")
    self.tokenizer = shapeworld_tokenizer()
    self._model = build_model(config.model, vocab_size=self.tokenizer.vocab_size,
                              max_length=config.data.context_length)
    if getattr(self._model, "cross_attention", False):
      raise ValueError("the language model is decoder-only: set model.cross_attention=False")
    self._eval_cache = None
    self._token_stats_fn = jax.jit(self._token_stats)

  @property
  def model(self):
    return self._model

  def train_batches(self, process_index: int, process_count: int):
    data = self.config.data
    loader = lambda source: _LoadText(source, self.tokenizer, data.context_length,
                                      self.config.seed, bool(data.get("pack", False)))
    return example_train_batches(self.config, loader, process_index, process_count)

  def check_batch(self, batch, step: int) -> None:
    text = batch.get("text")
    check_tokens(batch, step, "text", self.config.data.context_length,
                 0 if text is None else len(text))

  def init_params(self, rng: jax.Array) -> Any:
    tokens = np.zeros((1, self.config.data.context_length), np.int32)
    return self._model.init(rng, tokens)["params"]

  def _token_stats(self, params, text):
    """Per-row (summed NLL, correct next tokens, targets) of `text` int `[B, L]`."""
    logits = self._model.apply({"params": params}, text)[:, :-1]
    targets = text[:, 1:]
    weights = (targets != self.tokenizer.pad_id).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return (nll * weights).sum(1), (hits * weights).sum(1), weights.sum(1)

  def loss_fn(self, params, batch, rng):
    del rng  # No dropout.
    nll, hits, count = self._token_stats(params, batch["text"])
    total = jnp.maximum(count.sum(), 1.0)
    return nll.sum() / total, {"token_accuracy": hits.sum() / total}

  def _eval_data(self) -> dict[str, np.ndarray]:
    """Every text of the first `eval.num_images` test images: text int32 `[T, L]`, kind int `[T]`
    (index into TEXT_KINDS)."""
    if self._eval_cache is None:
      source = shapeworld_source(self.config.data, "test", self.config.eval.num_images)
      rows, kinds = [], []
      for index in range(len(source)):
        for kind, text in image_texts(source[index]):
          rows.append(encode_whole(self.tokenizer, text, self.config.data.context_length))
          kinds.append(TEXT_KINDS.index(kind))
      self._eval_cache = {"text": np.stack(rows), "kind": np.asarray(kinds)}
      if self.config.data.get("pack", False):
        self._eval_cache["packed"] = pack_rows(rows, self.tokenizer.pad_id,
                                               self.config.data.context_length)
    return self._eval_cache

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    """eval_loss (mean NLL per target token), perplexity, token_accuracy; each per kind too."""
    data = self._eval_data()
    chunks = sharding.map_in_chunks(functools.partial(self._token_stats_fn, params), (data["text"],),
                                    mesh, self.config.eval.batch_size)
    nll, hits, count = (np.concatenate([np.asarray(out[i])[:rows] for rows, out in chunks])
                        for i in range(3))
    results = {}
    for name, rows in [("", slice(None))] + [(f"_{k}", data["kind"] == i)
                                             for i, k in enumerate(TEXT_KINDS)]:
      total = max(float(count[rows].sum()), 1.0)
      loss = float(nll[rows].sum()) / total
      results[f"eval_loss{name}"] = loss
      results[f"perplexity{name}"] = float(np.exp(loss))
      results[f"token_accuracy{name}"] = float(hits[rows].sum()) / total
    if "packed" in data:
      # The same texts packed as in training: the positions past one text's length are scored.
      chunks = sharding.map_in_chunks(functools.partial(self._token_stats_fn, params),
                                      (data["packed"],), mesh, self.config.eval.batch_size)
      nll, hits, count = (sum(float(np.asarray(out[i])[:rows].sum()) for rows, out in chunks)
                          for i in range(3))
      results["eval_loss_packed"] = nll / max(count, 1.0)
      results["token_accuracy_packed"] = hits / max(count, 1.0)
    return results


def pack_rows(rows: list[np.ndarray], pad_id: int, context_length: int) -> np.ndarray:
  """int32 `[R, L]`: the encoded texts `rows` (each BOS t EOS, pad-filled) in order, as many
  whole texts per row as fit."""
  packed, current = [], []
  for row in rows:
    ids = [int(t) for t in row if t != pad_id]
    if current and len(current) + len(ids) > context_length:
      packed.append(current)
      current = []
    current = current + ids
  packed.append(current)
  out = np.full((len(packed), context_length), pad_id, np.int32)
  for i, ids in enumerate(packed):
    out[i, :len(ids)] = ids
  return out
