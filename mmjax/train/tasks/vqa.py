"""Visual question answering on ShapeWorld: a classifier head or a generative (Captioner) head.

The model (`config.model.name`, see `configs/vqa_shapeworld.py`) is the head:
  "vqa_classifier" (the classifier head): `VQAClassifier`, softmax cross-entropy over
    `SHAPEWORLD_ANSWERS`.
  "captioner" (the generative head): `Captioner` on BOS + question + answer + EOS, the prompt
    masked out of the loss; evaluated by greedy decoding constrained to the answer list.
  "unified_decoder" (the generative head on the LLaVA-style `UnifiedDecoder`: image tokens
    first, then the same rows, in one causal transformer).

Each training row is one of an image's 5 question/answer pairs, chosen by
`pipeline.example_rng(seed, epoch, index, "question")`.
`evaluate` asks all 5 questions of each of the first `eval.num_examples / 5` test images and
reports accuracy overall and per question type (`QUESTION_TYPES`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import (check_images, check_tokens, example_train_batches,
                                          image_text_init_inputs, shapeworld_source,
                                          text_tower_fields)
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.losses import caption_loss
from mmjax.models import build_model
from mmjax.models.vqa import SHAPEWORLD_ANSWERS, GenerativeAnswerer, generative_example
from mmjax.train.evaluators import VQAEvaluator
from mmjax.train.tasks.base import Task

# model.name -> head; the unified decoder has the Captioner's decoding interface.
HEADS = {"vqa_classifier": "classifier", "captioner": "generative",
         "unified_decoder": "generative"}
QUESTIONS_PER_IMAGE = 5
QUESTION_TYPES = ("count", "colour", "shape", "exists", "relation", "size")


def question_type(slot: int, question: str) -> int:
  """Index into `QUESTION_TYPES` of ShapeWorld question `slot` (0-4) of an image.

  Slots 0-3 are count, colour, shape, existence; slot 4 is a relation question, or a size
  question ("what size is ...") when the image has one object or no nameable pair.
  """
  if slot < 4:
    return slot
  return QUESTION_TYPES.index("size" if question.startswith("what size") else "relation")


class _LoadQuestion:
  """(stream position, source index) -> one question of the image, for `example_batches`.

  Classifier rows: image float32 `[H, W, 3]`, question int32 `[L]` (BOS + question + EOS),
  answer int32 `[]` (index into the answer list), question_type int32 `[]`.
  Generative rows add tokens, prompt_mask, prompt, prompt_length (see `generative_example`).
  """

  def __init__(self, source, tokenizer, context_length: int, seed: int, head: str,
               answers: tuple[str, ...]):
    self.source, self.tokenizer, self.context_length = source, tokenizer, context_length
    self.seed, self.head = seed, head
    self.answer_index = {answer: i for i, answer in enumerate(answers)}
    self.image_shape = (source.image_size, source.image_size, 3)

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    item = self.source[index]
    epoch = position // len(self.source)
    rng = pipeline.example_rng(self.seed, epoch, index, "question")
    slot = int(rng.integers(QUESTIONS_PER_IMAGE))
    image = pipeline.check_image(item["image"], index, self.image_shape)
    return {"image": image.astype(np.float32) / np.float32(255),
            **self.encode(item["questions"][slot], item["answers"][slot], slot)}

  def encode(self, question: str, answer: str, slot: int) -> dict[str, np.ndarray]:
    """The text fields of one (question, answer) pair (everything but the image)."""
    if answer not in self.answer_index:
      raise ValueError(f"answer {answer!r} is not in the answer list {sorted(self.answer_index)}")
    row = {"question": self.tokenizer.encode_batch([question], self.context_length)[0],
           "answer": np.int32(self.answer_index[answer]),
           "question_type": np.int32(question_type(slot, question))}
    if self.head == "generative":
      row.update(generative_example(self.tokenizer.encode(question), self.tokenizer.encode(answer),
                                    self.context_length, self.tokenizer))
    return row


class VQATask(Task):
  """ShapeWorld VQA with the classifier ("vqa_classifier") or generative ("captioner") head."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.head = HEADS.get(config.model.get("name"))
    if self.head is None:
      raise ValueError(f"model.name must be one of {sorted(HEADS)} (the classifier or the "
                       f"generative head), got {config.model.get('name')!r}")
    if config.eval.num_examples % QUESTIONS_PER_IMAGE or config.eval.num_examples <= 0:
      raise ValueError(f"eval.num_examples must be a positive multiple of {QUESTIONS_PER_IMAGE} "
                       f"(all questions of each test image), got {config.eval.num_examples}")
    self.tokenizer = shapeworld_tokenizer()
    self.answers = SHAPEWORLD_ANSWERS
    length = config.data.context_length
    if self.head == "generative":
      self._model = build_model(config.model, vocab_size=self.tokenizer.vocab_size,
                                max_length=length)
    else:
      self._model = build_model(config.model, num_answers=len(self.answers),
                                question_encoder=text_tower_fields(self.tokenizer, length))
    self.answerer = (GenerativeAnswerer(self._model, self.answers, self.tokenizer)
                     if self.head == "generative" else None)
    self._eval_cache = None
    self._evaluators = None

  @property
  def model(self):
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int):
    return shapeworld_source(self.config.data, split, length)

  def _loader(self, source) -> _LoadQuestion:
    return _LoadQuestion(source, self.tokenizer, self.config.data.context_length, self.config.seed,
                         self.head, self.answers)

  def train_batches(self, process_index: int, process_count: int):
    return example_train_batches(self.config, self._loader, process_index, process_count)

  def check_batch(self, batch, step: int) -> None:
    data = self.config.data
    image = check_images(batch, step, data.image_size)
    check_tokens(batch, step, "tokens" if self.head == "generative" else "question",
                 data.context_length, len(image))

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    return self._model.init(rng, *image_text_init_inputs(self.config.data))["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # No dropout.
    if self.head == "classifier":
      logits = self._model.apply({"params": params}, batch["image"], batch["question"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["answer"]).mean()
      correct = jnp.argmax(logits, -1) == batch["answer"]
    else:
      tokens = batch["tokens"]
      logits = self._model.apply({"params": params}, batch["image"], tokens)
      loss = caption_loss(logits, tokens, self.tokenizer.pad_id, batch["prompt_mask"])
      # Teacher-forced first answer token, unconstrained argmax over the whole vocabulary.
      last_prompt = batch["prompt_length"] - 1
      rows = jnp.arange(tokens.shape[0])
      correct = jnp.argmax(logits[rows, last_prompt], -1) == tokens[rows, last_prompt + 1]
    return loss, {"accuracy": correct.astype(jnp.float32).mean()}

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self) -> dict[str, np.ndarray]:
    """All 5 questions of the first `eval.num_examples / 5` test images, built once.

    Returns image float32 `[N, H, W, 3]`, and per question (row 5 i + k = question k of image
    i) question int32 `[5N, L]`, answer int32 `[5N]`, question_type int32 `[5N]`, plus the
    generative fields (tokens, prompt_mask, prompt, prompt_length) for that head.
    """
    if self._eval_cache is None:
      num_images = self.config.eval.num_examples // QUESTIONS_PER_IMAGE
      source = self._source("test", num_images)
      loader = self._loader(source)
      images, rows = [], []
      for index in range(num_images):
        item = source[index]
        images.append(pipeline.check_image(item["image"], index, loader.image_shape))
        if len(item["questions"]) != QUESTIONS_PER_IMAGE:
          raise ValueError(f"test image {index} has {len(item['questions'])} questions, "
                           f"expected {QUESTIONS_PER_IMAGE}")
        rows += [loader.encode(q, a, slot)
                 for slot, (q, a) in enumerate(zip(item["questions"], item["answers"]))]
      self._eval_cache = {"image": np.stack(images).astype(np.float32) / np.float32(255),
                          **{key: np.stack([row[key] for row in rows]) for key in rows[0]}}
    return self._eval_cache

  def evaluators(self) -> dict[str, Any]:
    """{"vqa": VQAEvaluator} over all 5 questions of each eval image (the image encoded once),
    built on first use."""
    if self._evaluators is None:
      data, q = self._eval_data(), QUESTIONS_PER_IMAGE
      n = len(data["image"])
      if self.head == "classifier":
        predict_fn, decode_fn = self._predict_answers, None
        inputs = {"image": data["image"], "question": data["question"].reshape(n, q, -1)}
      else:
        predict_fn, decode_fn = self._decode_answers, self._answer_indices
        width = data["prompt"].shape[1] - self.answerer.max_new_tokens  # room for answer + EOS
        inputs = {"image": data["image"], "prompt": data["prompt"][:, :width].reshape(n, q, width),
                  "prompt_length": data["prompt_length"].reshape(n, q)}
      self._evaluators = {"vqa": VQAEvaluator(
          predict_fn, inputs, data["answer"].reshape(n, q), self.config.eval.batch_size,
          question_types=data["question_type"].reshape(n, q), type_names=QUESTION_TYPES,
          decode_fn=decode_fn)}
    return self._evaluators

  def _predict_answers(self, params, batch) -> jax.Array:
    """Classifier head: answer indices int32 `[B, Q]` of images `[B, H, W, 3]` and their
    questions int `[B, Q, L]`."""
    model, variables = self._model, {"params": params}
    image_tokens = model.apply(variables, batch["image"], method=model.encode_image)
    question = batch["question"]
    logits = model.apply(variables, jnp.repeat(image_tokens, QUESTIONS_PER_IMAGE, axis=0),
                         question.reshape(-1, question.shape[-1]), method=model.answer_logits)
    return jnp.argmax(logits, -1).astype(jnp.int32).reshape(question.shape[:2])

  def _decode_answers(self, params, batch) -> jax.Array:
    """Generative head: constrained-decoded answer tokens int32 `[B, Q, T + 1]` of images
    `[B, H, W, 3]` and their prompts int `[B, Q, P]` (prompt_length `[B, Q]`)."""
    prompt = batch["prompt"]
    # Padding rows have prompt length 0: decode them from a lone pad token.
    lengths = jnp.maximum(batch["prompt_length"].reshape(-1), 1)
    tokens = self.answerer.decode(params, batch["image"], prompt.reshape(-1, prompt.shape[-1]),
                                  lengths, QUESTIONS_PER_IMAGE).tokens
    return tokens.reshape(prompt.shape[:2] + tokens.shape[-1:])

  def _answer_indices(self, tokens: np.ndarray) -> np.ndarray:
    """Host answer tokens `[N, Q, T + 1]` -> answer indices int `[N, Q]` (-1: not an answer)."""
    return self.answerer.answer_indices(tokens.reshape(-1, tokens.shape[-1])).reshape(
        tokens.shape[:2])

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    return self.evaluators()["vqa"].evaluate(params, mesh)
