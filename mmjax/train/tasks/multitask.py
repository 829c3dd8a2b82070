"""Instruction multi-task learning on ShapeWorld (OFA): one model, one vocabulary, every task.

Each training image carries `data.rows_per_image` (K) rows, each one task's (instruction,
target). With `data.row_tasks="sampled"` the task of row k is drawn with probabilities
`config.tasks` (normalised) by `pipeline.example_rng(seed, epoch, index, f"task/{k}")`; with
"every", row k takes the (k mod n)-th of the n tasks of positive probability (in `TASKS`
order), so K = n gives every image one row of every task and each task sees all `batch_size`
images a step. The image goes through the vision encoder once for its K rows (`batch_size`
counts images):

  caption    "what does the image describe ?"                 -> one of the 5 captions
  vqa        the question ("how many circles are there ?")    -> the answer's words
  grounding  'which region does the text " the red circle " describe ?'
                                                              -> 4 location bins (x0 y0 x1 y1)

The instruction goes to the encoder. The decoder reads BOS + target + EOS with
`prompt_type="none"`; with "prev_output" (OFA's name) it reads BOS + the instruction's words +
target + EOS, the instruction masked out of the loss and given as the decoding prompt, so the
decoder's queries carry the instruction too (a grounding query then names the object it looks
for). The vocabulary is
the ShapeWorld words plus the instruction words (`INSTRUCTION_WORDS`), then `num_bins`
location bins (bins last, as `mmjax.models.grounding`'s coordinate tokens). The loss is

    L = sum_t lambda_t L_t,   L_t = mean next-token NLL over the target tokens of task t's rows

with lambda_t = `config.loss_weights[t]` (a task without rows in a batch adds 0). Bin targets
are one-hot, or Gaussians of `config.bin_sigma` bins (`mmjax.losses.coordinate_tokens`).

`evaluate` runs the dedicated tasks' evaluators on the same test images they use: captions of
the first `eval.num_images` (greedy, words only) by BLEU-4 / CIDEr-D / attributes; all 5
questions of the first `eval.num_questions / 5` (greedy constrained to the answer list) by
accuracy overall and per type; the expressions of the first `eval.num_expressions` (greedy
over bins only) by acc@0.5 / acc@0.75 / mean IoU. Keys are prefixed "caption_", "vqa_",
"grounding_".
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

from mmjax import decoding
from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import check_images, check_tokens, example_train_batches, \
    shapeworld_source
from mmjax.data.shapeworld_text import VOCAB
from mmjax.data.tokenizer import WordTokenizer
from mmjax.losses.coordinate_tokens import token_nll
from mmjax.models import build_model
from mmjax.models.grounding import CoordinateDecoder, quantize_coordinates
from mmjax.models.vqa import SHAPEWORLD_ANSWERS, GenerativeAnswerer
from mmjax.train.evaluators import (CaptioningEvaluator, GroundingEvaluator, VQAEvaluator,
                                    prefixed_results)
from mmjax.train.tasks.base import Task
from mmjax.train.tasks.captioning import ATTRIBUTE_LABELS, shapeworld_attribute_metrics
from mmjax.train.tasks.grounding import IOU_THRESHOLDS, checked_bin_sigma
from mmjax.train.tasks.vqa import QUESTION_TYPES, QUESTIONS_PER_IMAGE, question_type

TASKS = ("caption", "vqa", "grounding")
PROMPT_TYPES = ("none", "prev_output")   # the decoder's prompt: BOS, or BOS + instruction
ROW_TASKS = ("sampled", "every")        # row k's task: drawn by config.tasks, or task k mod n
CAPTION_INSTRUCTION = "what does the image describe ?"
GROUNDING_INSTRUCTION = 'which region does the text " {} " describe ?'
INSTRUCTION_WORDS = ("does", "describe", "which", "region", "text", '"')


def instruction_tokenizer() -> WordTokenizer:
  """ShapeWorld's word tokenizer with the instruction words added (pad 0, bos 1, eos 2)."""
  return WordTokenizer((*VOCAB, *INSTRUCTION_WORDS))


def instruction(task: str, text: str = "") -> str:
  """The instruction of `task`: the caption prompt, the question `text`, or the grounding
  prompt around the expression `text`."""
  if task == "caption":
    return CAPTION_INSTRUCTION
  if task == "vqa":
    return text
  if task == "grounding":
    return GROUNDING_INSTRUCTION.format(text)
  raise ValueError(f"unknown task {task!r}; the instruction tasks are {TASKS}")


def _padded(ids: list[int], length: int, what: str, limit: str, pad_id: int) -> np.ndarray:
  if len(ids) > length:
    raise ValueError(f"{what} takes {len(ids)} tokens with BOS and EOS, more than "
                     f"{limit}={length}")
  row = np.full(length, pad_id, np.int32)
  row[:len(ids)] = ids
  return row


class _LoadInstruction:
  """(stream position, source index) -> one image and K rows of tasks drawn by the task
  probabilities.

  Examples: image float32 `[H, W, 3]` in [0, 1], instruction int32 `[K, Ls]` (BOS +
  instruction + EOS), tokens int32 `[K, L]` (the decoder prompt + target + EOS), prompt_length
  int32 `[K]` (1 for BOS alone, 1 + the instruction's words with "prev_output"), task int32
  `[K]` (indices into `TASKS`).
  """

  def __init__(self, source, tokenizer: WordTokenizer, probabilities: np.ndarray, seed: int,
               source_length: int, context_length: int, num_bins: int, rows_per_image: int,
               prompt_type: str = "none", row_tasks: str = "sampled"):
    self.source, self.tokenizer, self.probabilities = source, tokenizer, probabilities
    self.seed, self.source_length, self.context_length = seed, source_length, context_length
    self.num_bins, self.rows_per_image = num_bins, rows_per_image
    self.prompt_type, self.row_tasks = prompt_type, row_tasks
    self.active_tasks = [t for t, p in zip(TASKS, probabilities) if p > 0]
    self.image_shape = (source.image_size, source.image_size, 3)

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    item = self.source[index]
    epoch = position // len(self.source)
    rng = lambda purpose: pipeline.example_rng(self.seed, epoch, index, purpose)
    image = pipeline.check_image(item["image"], index, self.image_shape)
    rows, tasks = [], []
    for k in range(self.rows_per_image):
      if self.row_tasks == "every":
        task = self.active_tasks[k % len(self.active_tasks)]
      else:
        task = TASKS[int(rng(f"task/{k}").choice(len(TASKS), p=self.probabilities))]
      if task == "caption":
        captions = item["captions"]
        rows.append(self.caption(captions[int(rng(f"caption/{k}").integers(len(captions)))]))
      elif task == "vqa":
        slot = int(rng(f"question/{k}").integers(QUESTIONS_PER_IMAGE))
        rows.append(self.vqa(item["questions"][slot], item["answers"][slot]))
      else:
        rows.append(self.grounding(item["referring"], item["referring_box"], index))
      tasks.append(TASKS.index(task))
    return {"image": image.astype(np.float32) / np.float32(255),
            **{key: np.stack([row[key] for row in rows]) for key in rows[0]},
            "task": np.array(tasks, np.int32)}

  def _row(self, instruction_text: str, target_ids: list[int]) -> dict[str, np.ndarray]:
    tok = self.tokenizer
    source_ids = tok.encode(instruction_text)
    if tok.unk_id in source_ids:
      raise ValueError(f"instruction {instruction_text!r} has a word outside the vocabulary")
    prompt = [tok.bos_id] + (source_ids if self.prompt_type == "prev_output" else [])
    return {"instruction": _padded([tok.bos_id, *source_ids, tok.eos_id], self.source_length,
                                   f"instruction {instruction_text!r}", "data.source_length",
                                   tok.pad_id),
            "tokens": _padded([*prompt, *target_ids, tok.eos_id], self.context_length,
                              "target" + " after its instruction prompt" * (len(prompt) > 1),
                              "data.context_length", tok.pad_id),
            "prompt_length": np.int32(len(prompt))}

  def caption(self, caption: str) -> dict[str, np.ndarray]:
    return self._row(instruction("caption"), self.tokenizer.encode(caption))

  def vqa(self, question: str, answer: str) -> dict[str, np.ndarray]:
    if answer not in SHAPEWORLD_ANSWERS:
      raise ValueError(f"answer {answer!r} is not in the answer list {SHAPEWORLD_ANSWERS}")
    return self._row(instruction("vqa", question), self.tokenizer.encode(answer))

  def grounding(self, expression: str, box, index: int) -> dict[str, np.ndarray]:
    box = np.asarray(box, np.float32)
    if box.shape != (4,) or not np.all((box >= 0) & (box <= 1)) or np.any(box[2:] < box[:2]):
      raise ValueError(f"example {index}: referring_box must be float [4] (x0, y0, x1, y1) in "
                       f"[0, 1] with x0 <= x1, y0 <= y1; got {box.tolist()}")
    bins = self.tokenizer.vocab_size + quantize_coordinates(box, self.num_bins)
    return self._row(instruction("grounding", expression), bins.tolist())


class MultiTask(Task):
  """Captioning + VQA + grounding as instructions to one `OFA` model (`config.model`)."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.probabilities = _task_vector(config.tasks, "tasks", positive_sum=True)
    self.probabilities = self.probabilities / self.probabilities.sum()
    self.loss_weights = _task_vector(config.loss_weights, "loss_weights")
    self.num_bins = int(config.num_bins)
    if self.num_bins < 2:
      raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
    self.bin_sigma = checked_bin_sigma(config)
    self.prompt_type = config.get("prompt_type", "none")
    if self.prompt_type not in PROMPT_TYPES:
      raise ValueError(f"prompt_type must be one of {PROMPT_TYPES} (the decoder's prompt: BOS, "
                       f"or BOS + the instruction), got {self.prompt_type!r}")
    self.rows_per_image = int(config.data.rows_per_image)
    if self.rows_per_image < 1:
      raise ValueError(f"data.rows_per_image must be >= 1, got {self.rows_per_image}")
    self.row_tasks = config.data.get("row_tasks", "sampled")
    if self.row_tasks not in ROW_TASKS:
      raise ValueError(f"data.row_tasks must be one of {ROW_TASKS} (rows' tasks drawn by "
                       f"config.tasks, or every task in turn), got {self.row_tasks!r}")
    ev = config.eval
    if ev.num_questions <= 0 or ev.num_questions % QUESTIONS_PER_IMAGE:
      raise ValueError(f"eval.num_questions must be a positive multiple of "
                       f"{QUESTIONS_PER_IMAGE} (all questions of each test image), got "
                       f"{ev.num_questions}")
    if ev.num_images <= 0 or ev.num_expressions <= 0:
      raise ValueError(f"eval.num_images and eval.num_expressions must be positive, got "
                       f"{ev.num_images} and {ev.num_expressions}")
    self.tokenizer = instruction_tokenizer()
    self.word_vocab_size = self.tokenizer.vocab_size
    data = config.data
    self._model = build_model(config.model, vocab_size=self.word_vocab_size + self.num_bins,
                              max_length=data.context_length, source_length=data.source_length,
                              pad_id=self.tokenizer.pad_id)
    self.answerer = GenerativeAnswerer(self._model, SHAPEWORLD_ANSWERS, self.tokenizer)
    self.box_decoder = CoordinateDecoder(self._model, self.word_vocab_size, self.num_bins,
                                         self.tokenizer.pad_id)
    self._eval_cache = None
    self._evaluators = None

  @property
  def model(self):
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _loader(self, source) -> _LoadInstruction:
    data = self.config.data
    return _LoadInstruction(source, self.tokenizer, self.probabilities, self.config.seed,
                            data.source_length, data.context_length, self.num_bins,
                            self.rows_per_image, self.prompt_type, self.row_tasks)

  def train_batches(self, process_index: int, process_count: int):
    return example_train_batches(self.config, self._loader, process_index, process_count)

  def check_batch(self, batch, step: int) -> None:
    data, k = self.config.data, self.rows_per_image
    image = check_images(batch, step, data.image_size)
    rows = {key: np.asarray(batch[key]).reshape(-1, *np.shape(batch[key])[2:])
            for key in ("instruction", "tokens", "task", "prompt_length") if key in batch}
    for key, length in (("instruction", data.source_length), ("tokens", data.context_length)):
      if key in batch and np.shape(batch[key])[:2] != (len(image), k):
        raise ValueError(f"batch at step {step}: {key} has shape {np.shape(batch[key])}, "
                         f"expected [{len(image)}, data.rows_per_image={k}, {length}]")
      check_tokens(rows, step, key, length, len(image) * k)
    task = rows.get("task")
    if task is None or task.shape != (len(image) * k,) or np.any((task < 0) |
                                                                 (task >= len(TASKS))):
      raise ValueError(f"batch at step {step}: task must be int [{len(image)}, {k}] in "
                       f"[0, {len(TASKS)}) (indices into {TASKS}), got "
                       f"{None if task is None else np.shape(batch['task'])}")
    prompt_length = rows.get("prompt_length")
    if prompt_length is None or prompt_length.shape != (len(image) * k,) or np.any(
        (prompt_length < 1) | (prompt_length >= data.context_length)):
      got = None if prompt_length is None else np.shape(batch["prompt_length"])
      raise ValueError(f"batch at step {step}: prompt_length must be int [{len(image)}, {k}] in "
                       f"[1, data.context_length={data.context_length}) (the decoder prompt's "
                       f"tokens), got {got}")

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    data = self.config.data
    images = jnp.zeros((1, data.image_size, data.image_size, 3), jnp.float32)
    return self._model.init(rng, images, jnp.zeros((1, data.source_length), jnp.int32),
                            jnp.zeros((1, data.context_length), jnp.int32))["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # No dropout.
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # [B, K, ...] -> [B K, ...], image-major
    tokens = flat(batch["tokens"])
    logits = self._model.apply({"params": params}, batch["image"], flat(batch["instruction"]),
                               tokens)
    targets = tokens[:, 1:]
    nll = token_nll(logits, tokens, self.word_vocab_size, self.num_bins,
                    self.bin_sigma)                                                # [B, L-1]
    # Target j is token j + 1: a prompt token (given, not predicted) when j + 1 < prompt_length.
    beyond_prompt = jnp.arange(1, tokens.shape[1]) >= flat(batch["prompt_length"])[:, None]
    valid = ((targets != self.tokenizer.pad_id) & beyond_prompt).astype(jnp.float32)
    of_task = (flat(batch["task"])[:, None] == jnp.arange(len(TASKS))).astype(jnp.float32)
    sums = jnp.einsum("rl,rt->t", nll * valid, of_task)                            # [tasks]
    counts = jnp.einsum("rl,rt->t", valid, of_task)
    task_losses = sums / jnp.maximum(counts, 1.0)
    loss = jnp.dot(jnp.asarray(self.loss_weights), task_losses)
    return loss, {f"loss_{name}": task_losses[k] for k, name in enumerate(TASKS)}

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self) -> dict[str, Any]:
    """The test images and every task's eval rows, built once (images shared by the tasks)."""
    if self._eval_cache is None:
      ev = self.config.eval
      num_vqa = ev.num_questions // QUESTIONS_PER_IMAGE
      count = max(ev.num_images, num_vqa, ev.num_expressions)
      source = shapeworld_source(self.config.data, "test", count)
      loader = self._loader(source)
      items = [source[i] for i in range(count)]
      images = np.stack([pipeline.check_image(item["image"], i, loader.image_shape)
                         for i, item in enumerate(items)]).astype(np.float32) / np.float32(255)
      caption_items = items[:ev.num_images]
      vqa_items = items[:num_vqa]
      for i, item in enumerate(vqa_items):
        if len(item["questions"]) != QUESTIONS_PER_IMAGE:
          raise ValueError(f"test image {i} has {len(item['questions'])} questions, expected "
                           f"{QUESTIONS_PER_IMAGE}")
      questions = [loader.vqa(q, a)["instruction"] for item in vqa_items
                   for q, a in zip(item["questions"], item["answers"])]
      self._eval_cache = dict(
          image=images,
          caption_instruction=loader.caption(caption_items[0]["captions"][0])["instruction"],
          references=[list(item["captions"]) for item in caption_items],
          attributes={key: np.stack([item[key] for item in caption_items])
                      for key in ATTRIBUTE_LABELS},
          vqa_instruction=np.stack(questions).reshape(num_vqa, QUESTIONS_PER_IMAGE, -1),
          vqa_answer=np.array([[SHAPEWORLD_ANSWERS.index(a) for a in item["answers"]]
                               for item in vqa_items], np.int32),
          vqa_type=np.array([[question_type(slot, q) for slot, q in enumerate(item["questions"])]
                             for item in vqa_items], np.int32),
          grounding_instruction=np.stack([
              loader.grounding(item["referring"], item["referring_box"], i)["instruction"]
              for i, item in enumerate(items[:ev.num_expressions])]),
          box=np.stack([np.asarray(item["referring_box"], np.float32)
                        for item in items[:ev.num_expressions]]))
    return self._eval_cache

  def evaluators(self) -> dict[str, Any]:
    """{"caption": CaptioningEvaluator, "vqa": VQAEvaluator, "grounding": GroundingEvaluator}
    on the eval data, built on first use."""
    if self._evaluators is None:
      data, ev = self._eval_data(), self.config.eval
      num_vqa = len(data["vqa_answer"])
      self._evaluators = {
          "caption": CaptioningEvaluator(
              self._generate_captions, self.tokenizer, data["image"][:ev.num_images],
              data["references"], ev.batch_size, attribute_labels=data["attributes"],
              attribute_metrics=shapeworld_attribute_metrics),
          "vqa": VQAEvaluator(
              self._decode_answers, {"image": data["image"][:num_vqa],
                                     "instruction": data["vqa_instruction"]},
              data["vqa_answer"], ev.batch_size, question_types=data["vqa_type"],
              type_names=QUESTION_TYPES, decode_fn=self._answer_indices),
          "grounding": GroundingEvaluator(
              self._predict_boxes, {"image": data["image"][:ev.num_expressions],
                                    "instruction": data["grounding_instruction"]},
              data["box"], ev.batch_size, thresholds=IOU_THRESHOLDS)}
    return self._evaluators

  def _prompts(self, instruction_rows) -> tuple[jax.Array, jax.Array]:
    """The decoder's prompts int32 `[R, P]` and lengths `[R]` of instruction rows `[R, Ls]`
    (BOS + instruction + EOS + pad): BOS alone (P = 1), or with "prev_output" the row without
    its EOS (P = Ls)."""
    tok = self.tokenizer
    rows = instruction_rows.shape[0]
    if self.prompt_type == "none":
      return jnp.full((rows, 1), tok.bos_id, jnp.int32), jnp.ones((rows,), jnp.int32)
    instruction_rows = jnp.asarray(instruction_rows)
    prompt = jnp.where(instruction_rows == tok.eos_id, tok.pad_id, instruction_rows)
    # The evaluators' padding rows are all pad: decode them from one (discarded) token.
    lengths = jnp.maximum((prompt != tok.pad_id).sum(1), 1)
    return prompt.astype(jnp.int32), lengths.astype(jnp.int32)

  def _generate_captions(self, params, images: jax.Array) -> jax.Array:
    """Caption tokens int32 `[B, L - P]` (EOS then padding), words only, greedy, after the
    P-token decoder prompt."""
    length = self.config.data.context_length
    instruction_row = self._eval_data()["caption_instruction"]
    # One instruction for every image: its prompt is trimmed to its own length.
    width = 1 if self.prompt_type == "none" else int((instruction_row != self.tokenizer.pad_id)
                                                     .sum()) - 1
    instruction_rows = jnp.broadcast_to(jnp.asarray(instruction_row),
                                        (images.shape[0], len(instruction_row)))
    cache = self._model.init_cache(params, images, length, instruction=instruction_rows)
    prompt, lengths = self._prompts(instruction_rows)
    step_fn = decoding.banned_tokens_step_fn(functools.partial(self._model.decode_step, params),
                                             self.word_vocab_size)  # no location bins
    return decoding.greedy(step_fn, cache, prompt[:, :width], lengths,
                           max_new_tokens=length - width, eos_id=self.tokenizer.eos_id,
                           pad_id=self.tokenizer.pad_id).tokens

  def _decode_answers(self, params, batch) -> jax.Array:
    """Answer tokens int32 `[B, Q, T + 1]` of images `[B, H, W, 3]` and their questions
    `[B, Q, Ls]`, constrained to the answer list (each image through the ViT once)."""
    instruction_rows = batch["instruction"]
    rows = instruction_rows.shape[0] * instruction_rows.shape[1]
    flat_rows = instruction_rows.reshape(rows, -1)
    prompt, lengths = self._prompts(flat_rows)
    tokens = self.answerer.decode(params, batch["image"], prompt, lengths,
                                  instruction=flat_rows).tokens
    return tokens.reshape(instruction_rows.shape[:2] + tokens.shape[-1:])

  def _answer_indices(self, tokens: np.ndarray) -> np.ndarray:
    return self.answerer.answer_indices(tokens.reshape(-1, tokens.shape[-1])).reshape(
        tokens.shape[:2])

  def _predict_boxes(self, params, batch) -> jax.Array:
    """Boxes float32 `[B, 4]` (x0, y0, x1, y1): greedy over the bins only."""
    prompt, lengths = self._prompts(batch["instruction"])
    return self.box_decoder.decode_boxes(params, batch["image"], prompt, lengths,
                                         instruction=batch["instruction"])

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    return prefixed_results(self.evaluators(), params, mesh)

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    from mmjax.train import plots
    if jax.process_index() != 0:
      return []
    return [plots.loss_curve(workdir)]


def _task_vector(weights, name: str, positive_sum: bool = False) -> np.ndarray:
  """float64 `[len(TASKS)]` of a {task: weight} config (missing tasks weigh 0)."""
  weights = dict(weights)
  unknown = sorted(set(weights) - set(TASKS))
  if unknown:
    raise ValueError(f"{name} names unknown tasks {unknown}; the instruction tasks are {TASKS}")
  vector = np.array([float(weights.get(task, 0.0)) for task in TASKS])
  if np.any(vector < 0) or (positive_sum and vector.sum() <= 0):
    raise ValueError(f"{name} must be non-negative{' with a positive sum' * positive_sum}, got "
                     f"{weights}")
  return vector
