"""Flamingo on interleaved ShapeWorld image-text rows, evaluated few-shot in context.

Vocabulary: ShapeWorld's words (V ids), then the two trainable tokens `<image>` (id V) and
`<eoc>` (end of chunk, id V + 1). A chunk is "<image> text <eoc>"; a training row is BOS and
`data.images_per_row` chunks, each of another train image (the row's indexed image first, then
images drawn by `pipeline.example_rng(seed, epoch, index, "interleaved")`), with all its chunks
of one kind, drawn by the weights `data.row_kinds`:

  vqa      "<image> how many circles are there ? two <eoc>"  (a question of the image, its answer)
  caption  "<image> a red circle is left of a blue square . <eoc>"   (a caption of the image)
  binding  "<image> what shape is the red object ? <w3> <eoc>"  (the colour or shape question,
           answered by the word the episode binds the true answer to; needs
           `data.binding.words` > 0, and its images are drawn by answer from the first
           `data.binding.pool_images` train images: mmjax/train/tasks/binding.py)

With `data.rices_rows.fraction` > 0, that share of the rows is built by retrieval instead, as
RICES builds the evaluation's prompts: a query image q of the first `data.rices_rows.pool_images`
train images, after its `images_per_row - 1` nearest other pool images by the frozen vision
tower (cosine of the pooled features, nearest last, next to q), every VQA chunk of the row
asking its image the same question slot. Random rows show the model support that says nothing
about the query, so it learns to ignore shots; these rows show it support that often does.
The tower's weights are those `init_from.vision` copies in (Flamingo's tower is frozen, so the
neighbours, computed once before step 0, stay right for the whole run).

The loss is next-token cross-entropy over every token after BOS except the `<image>` tokens
(the position of the next image is the data's, not the model's, to predict) and padding.

Evaluation (`eval.shots`, e.g. (0, 2, 4, 8)): each test image is asked with k support chunks
before it, of train images from the first `eval.support_images`, chosen by
`eval.support_selection`:

  random  drawn per test image by `eval.seed`; each VQA chunk a random question of its image;
  rices   Flamingo's retrieval-based in-context example selection: the train images nearest to
          the test image by the cosine similarity of the (frozen) vision tower's pooled
          features, the nearest last; each VQA chunk asks its image the test question's type
          (the same question slot).

The k-shot support is the first k of the largest k's, so a bigger k adds shots to a smaller
k's prompt. VQA: the prompt is BOS, k "<image> question answer <eoc>" chunks, then
"<image> question"; the answer is decoded greedily, constrained to the answer list and closed
by `<eoc>`, for all 5 questions of the first `eval.vqa_images` test images (one support set
per image). Captioning: the prompt is BOS, k "<image> caption <eoc>" chunks, then "<image>";
the caption is decoded greedily (words and `<eoc>` only) for the first `eval.caption_images`.
With `data.binding.words` > 0 each of the first `eval.vqa_images` test images is also asked
its colour and its shape question in a binding episode (support of train images from the
first `eval.support_images`, drawn by answer whatever `eval.support_selection` says, each
answer of the episode once per `ways` shots); the answer is the argmax over the binding
words' logits after "<image> question".
Metrics: "vqa_{k}shot_accuracy" (and per question type), "caption_{k}shot_bleu4",
"caption_{k}shot_cider_d" and the caption attribute accuracies; with 0 among the shots,
"vqa_{k}shot_gain" (k-shot minus 0-shot accuracy on the same questions) and its paired
standard error "vqa_{k}shot_gain_se" (`paired_gain`); with binding, "binding_{k}shot_accuracy"
(and _colour, _shape), its "_gain" and "_gain_se" over 0 shots, and
"binding_{k}shot_other_word" (the share answered with another word of the episode: with it,
the share of answers from the words in context).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import decoding
from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import check_tokens, example_train_batches, shapeworld_source
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.losses import caption_loss
from mmjax.models import build_model
from mmjax.models.vqa import SHAPEWORLD_ANSWERS, GenerativeAnswerer
from mmjax.nearest_neighbours import top_k_neighbours
from mmjax.train import sharding
from mmjax.train.evaluators import CaptioningEvaluator, VQAEvaluator, prefixed_results
from mmjax.train.tasks.base import Task
from mmjax.train.tasks.binding import (BINDING_SLOTS, BindingEpisodes, answers_by_slot,
                                       check_binding_sizes)
from mmjax.train.tasks.captioning import ATTRIBUTE_LABELS, shapeworld_attribute_metrics
from mmjax.train.tasks.vqa import QUESTION_TYPES, QUESTIONS_PER_IMAGE, question_type
from mmjax.train.warm_start import active_sources, warm_start

ROW_KINDS = ("vqa", "caption", "binding")
NUM_NEW_TOKENS = 2  # <image>, <eoc>; then `data.binding.words` binding words
SUPPORT_SELECTIONS = ("random", "rices")


class ChunkCodec:
  """Token ids of interleaved rows: ShapeWorld's tokenizer plus `<image>`, `<eoc>` and
  `binding_words` binding words (ids `word_id` .. `word_id + binding_words - 1`)."""

  def __init__(self, tokenizer, binding_words: int = 0):
    self.tokenizer = tokenizer
    self.image_id = tokenizer.vocab_size
    self.eoc_id = tokenizer.vocab_size + 1
    self.word_id = tokenizer.vocab_size + NUM_NEW_TOKENS
    self.binding_words = binding_words

  def chunk(self, text: str, close: bool = True) -> list[int]:
    """"<image> text <eoc>" (without `<eoc>` when not `close`)."""
    return [self.image_id, *self.tokenizer.encode(text)] + [self.eoc_id] * close

  def binding_chunk(self, question: str, word: int) -> list[int]:
    """"<image> question <word> <eoc>", binding word `word` in [0, binding_words)."""
    if not 0 <= word < self.binding_words:
      raise ValueError(f"binding word {word} is not in [0, {self.binding_words})")
    return [self.image_id, *self.tokenizer.encode(question), self.word_id + word, self.eoc_id]

  def row(self, chunks: list[list[int]], length: int, what: str) -> np.ndarray:
    """int32 `[length]`: BOS then the chunks, pad-filled; ValueError if they do not fit."""
    ids = [self.tokenizer.bos_id] + [t for chunk in chunks for t in chunk]
    if len(ids) > length:
      raise ValueError(f"{what} takes {len(ids)} tokens, more than {length}: raise "
                       "data.context_length (at most the LM's model.max_length) or use fewer "
                       "chunks")
    out = np.full(length, self.tokenizer.pad_id, np.int32)
    out[:len(ids)] = ids
    return out


def chunk_text(item: dict, kind: str, rng: np.random.Generator,
               slot: int | None = None) -> tuple[str, int]:
  """(text, question slot or -1) of one chunk of `kind` for ShapeWorld `item`; a VQA chunk
  asks the question in `slot`, or in a random one."""
  if kind == "vqa":
    slot = int(rng.integers(QUESTIONS_PER_IMAGE)) if slot is None else slot
    return f"{item['questions'][slot]} {item['answers'][slot]}", slot
  return item["captions"][int(rng.integers(len(item["captions"])))], -1


class _LoadRow:
  """(stream position, source index) -> image float32 `[M, H, W, 3]`, tokens int32 `[L]`.

  With `neighbours` (int `[P, >= M - 1]`, each of the first P source images' nearest other
  pool images, nearest first), a share `rices_fraction` of the rows is retrieval-built (the
  module docstring); the rest, and every row without `neighbours`, are random. Binding rows
  draw their episodes and images from `binding` (its pool: the source's first images).
  """

  def __init__(self, source, codec: ChunkCodec, config: ml_collections.ConfigDict,
               neighbours: np.ndarray | None = None, rices_fraction: float = 0.0,
               binding: BindingEpisodes | None = None):
    self.source, self.codec = source, codec
    self.seed, self.length = config.seed, config.data.context_length
    self.images_per_row = config.data.images_per_row
    self.kind_weights = row_kind_weights(config.data.row_kinds)
    self.image_shape = (source.image_size, source.image_size, 3)
    if neighbours is not None and (neighbours.ndim != 2 or
                                   neighbours.shape[1] < self.images_per_row - 1):
      raise ValueError(f"neighbours must be int [pool, >= data.images_per_row - 1 = "
                       f"{self.images_per_row - 1}], got shape {neighbours.shape}")
    if self.kind_weights[ROW_KINDS.index("binding")] > 0 and binding is None:
      raise ValueError("binding rows need their episodes: pass binding (data.binding.words > 0)")
    self.neighbours, self.rices_fraction, self.binding = neighbours, rices_fraction, binding

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    rng = pipeline.example_rng(self.seed, position // len(self.source), index, "interleaved")
    # One uniform draw whatever the number of kinds: rows of runs without binding are unchanged.
    kind = ROW_KINDS[int(rng.choice(len(ROW_KINDS), p=self.kind_weights))]
    if kind == "binding":
      return self._binding_row(rng)
    slot = None
    # The extra draw only when retrieval rows are on: random rows stay those of earlier runs.
    if (self.neighbours is not None and self.rices_fraction > 0
        and rng.random() < self.rices_fraction):
      query = index % len(self.neighbours)
      support = self.neighbours[query, :self.images_per_row - 1]
      indices = [int(i) for i in support[::-1]] + [query]   # the nearest last, then the query
      slot = int(rng.integers(QUESTIONS_PER_IMAGE))
    else:
      indices = [index] + [int(i) for i in rng.integers(len(self.source),
                                                        size=self.images_per_row - 1)]
    images, chunks = [], []
    for i in indices:
      item = self.source[i]
      images.append(pipeline.check_image(item["image"], i, self.image_shape))
      chunks.append(self.codec.chunk(chunk_text(item, kind, rng, slot)[0]))
    return {"image": np.stack(images).astype(np.float32) / np.float32(255),
            "tokens": self.codec.row(chunks, self.length, f"a row of {len(chunks)} {kind} chunks")}

  def _binding_row(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
    slot, indices, words = self.binding.training_chunks(rng, self.images_per_row)
    images, chunks = [], []
    for i, word in zip(indices, words):
      item = self.source[i]
      images.append(pipeline.check_image(item["image"], i, self.image_shape))
      chunks.append(self.codec.binding_chunk(item["questions"][slot], word))
    return {"image": np.stack(images).astype(np.float32) / np.float32(255),
            "tokens": self.codec.row(chunks, self.length, f"a row of {len(chunks)} binding chunks")}


def row_kind_weights(weights) -> np.ndarray:
  """float64 `[len(ROW_KINDS)]` probabilities of a {kind: weight} config."""
  weights = dict(weights)
  unknown = sorted(set(weights) - set(ROW_KINDS))
  vector = np.array([float(weights.get(kind, 0.0)) for kind in ROW_KINDS])
  if unknown or np.any(vector < 0) or vector.sum() <= 0:
    raise ValueError(f"data.row_kinds must weigh the kinds {ROW_KINDS} (non-negative, positive "
                     f"sum), got {weights}")
  return vector / vector.sum()


class InterleavedTask(Task):
  """Flamingo (`model.name="flamingo"`) on interleaved rows; few-shot VQA and captioning."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    data, ev = config.data, config.eval
    if data.get("name", "shapeworld") != "shapeworld":
      raise ValueError(f"the interleaved task reads ShapeWorld scenes, questions and captions; "
                       f"data.name must be 'shapeworld', got {data.name!r}")
    if config.model.get("name") != "flamingo":
      raise ValueError(f"the interleaved task trains Flamingo: model.name must be 'flamingo', "
                       f"got {config.model.get('name')!r}")
    if data.images_per_row < 1:
      raise ValueError(f"data.images_per_row must be >= 1, got {data.images_per_row}")
    weights = row_kind_weights(data.row_kinds)
    binding = data.get("binding") or ml_collections.ConfigDict(dict(words=0))
    self.binding_words = int(binding.words)
    if self.binding_words < 0 or (weights[ROW_KINDS.index("binding")] > 0
                                  and not self.binding_words):
      raise ValueError(f"binding rows (data.row_kinds.binding > 0) need binding words: set "
                       f"data.binding.words > 0, got {binding.words}")
    if self.binding_words:
      self.binding_ways = int(binding.ways)
      self.binding_pool = int(binding.pool_images)
      check_binding_sizes(self.binding_words, self.binding_ways)
    self.shots = tuple(int(k) for k in ev.shots)
    if not self.shots or min(self.shots) < 0 or len(set(self.shots)) != len(self.shots):
      raise ValueError(f"eval.shots must be distinct counts >= 0, got {tuple(ev.shots)}")
    if min(ev.vqa_images, ev.caption_images, ev.support_images) < 1:
      raise ValueError("eval.vqa_images, eval.caption_images and eval.support_images must be "
                       f">= 1, got {ev.vqa_images}, {ev.caption_images}, {ev.support_images}")
    self.tokenizer = shapeworld_tokenizer()
    self.codec = ChunkCodec(self.tokenizer, self.binding_words)
    self._model = build_model(config.model, vocab_size=self.tokenizer.vocab_size,
                              image_token_id=self.codec.image_id,
                              num_new_tokens=NUM_NEW_TOKENS + self.binding_words)
    if data.context_length > self._model.max_length:
      raise ValueError(f"data.context_length={data.context_length} exceeds the LM's "
                       f"model.max_length={self._model.max_length}")
    self.answerer = GenerativeAnswerer(self._model, SHAPEWORLD_ANSWERS, self.tokenizer,
                                       end_id=self.codec.eoc_id)
    self.max_caption_tokens = ev.max_caption_tokens
    self.support_selection = ev.get("support_selection", "random")
    if self.support_selection not in SUPPORT_SELECTIONS:
      raise ValueError(f"eval.support_selection must be one of {SUPPORT_SELECTIONS}, got "
                       f"{self.support_selection!r}")
    rices_rows = data.get("rices_rows") or ml_collections.ConfigDict(dict(fraction=0.0))
    self.rices_fraction = float(rices_rows.fraction)
    if not 0.0 <= self.rices_fraction <= 1.0:
      raise ValueError(f"data.rices_rows.fraction must be in [0, 1], got {self.rices_fraction}")
    self.rices_pool = int(rices_rows.get("pool_images", 0))
    if self.rices_fraction > 0 and self.rices_pool < data.images_per_row:
      raise ValueError(f"data.rices_rows.pool_images must be >= data.images_per_row="
                       f"{data.images_per_row} (a query and its neighbours), got {self.rices_pool}")
    self._neighbours = None
    self._pooled_fn = jax.jit(lambda p, x: self._model.apply(
        {"params": p}, x, method=lambda m, x: m.vision_encoder(x)[1]))
    self._eval_cache = None
    self._evaluators = None

  @property
  def model(self):
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def train_batches(self, process_index: int, process_count: int):
    neighbours = self.training_neighbours() if self.rices_fraction > 0 else None
    binding = None
    if self.binding_words and self.config.data.row_kinds.get("binding", 0) > 0:
      pool = shapeworld_source(self.config.data, "train", self.binding_pool)
      binding = BindingEpisodes(answers_by_slot(pool), self.binding_words, self.binding_ways)
    return example_train_batches(
        self.config, lambda s: _LoadRow(s, self.codec, self.config, neighbours,
                                        self.rices_fraction, binding),
        process_index, process_count)

  def training_neighbours(self) -> np.ndarray:
    """int32 `[P, images_per_row - 1]`: each of the first P = `data.rices_rows.pool_images`
    train images' nearest other pool images, nearest first, by `image_features` of the
    vision tower that `init_from.vision` copies in."""
    init_from = self.config.get("init_from")
    vision = init_from.get("vision") if init_from is not None else None
    if vision is None or not active_sources(vision):
      raise ValueError("data.rices_rows.fraction > 0 retrieves rows by the frozen vision "
                       "tower: set init_from.vision.workdir (or .checkpoint) to the run it "
                       "comes from")
    mesh = self.mesh
    if mesh is None:
      raise RuntimeError("training_neighbours runs the vision tower on the task's mesh: call "
                         "set_mesh(mesh) first (the trainer does)")
    params = nn.unbox(jax.jit(self.init_params)(jax.random.key(self.config.seed)))
    params, _ = warm_start(params, vision, mesh,
                           jax.tree.map(lambda _: sharding.replicated(mesh), params))
    pool = shapeworld_source(self.config.data, "train", self.rices_pool)
    images = np.stack([np.asarray(pool[i]["image"]) for i in range(len(pool))])
    features = self.image_features(params, images.astype(np.float32) / 255, mesh)
    return pool_neighbours(features, self.config.data.images_per_row - 1)

  def check_batch(self, batch, step: int) -> None:
    data = self.config.data
    image = batch.get("image")
    expected = (data.images_per_row, data.image_size, data.image_size, 3)
    if image is None or image.ndim != 5 or image.shape[1:] != expected:
      raise ValueError(f"batch at step {step}: image must be float [B, {', '.join(map(str, expected))}]"
                       f", got {None if image is None else image.shape}")
    check_tokens(batch, step, "tokens", data.context_length, len(image))

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    data = self.config.data
    images = np.zeros((1, 1, data.image_size, data.image_size, 3), np.float32)
    tokens = np.zeros((1, data.context_length), np.int32)
    return self._model.init(rng, images, tokens)["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # No dropout.
    tokens = batch["tokens"]
    logits = self._model.apply({"params": params}, batch["image"], tokens)
    loss = caption_loss(logits, tokens, self.tokenizer.pad_id,
                        prompt_mask=tokens == self.codec.image_id)
    # Next-token accuracy on the chunk ends: is <eoc> predicted where it comes?
    is_end = (tokens[:, 1:] == self.codec.eoc_id).astype(jnp.float32)
    hits = (jnp.argmax(logits[:, :-1], -1) == tokens[:, 1:]).astype(jnp.float32)
    return loss, {"eoc_accuracy": (hits * is_end).sum() / jnp.maximum(is_end.sum(), 1.0)}

  # -- evaluation -----------------------------------------------------------------------------

  def _support(self, kind: str, query_index: int, train, slots: tuple[int, ...] | None = None
               ) -> tuple[list, list]:
    """The largest k's support of test image `query_index`: (images uint8, chunk lists), of
    which a k-shot prompt takes the first k (`_shots`). Random train images, or with RICES the
    nearest by the vision tower's features, nearest first. With `slots`, one chunk list per
    slot, each VQA chunk asking its image the question in that slot (each image loaded once);
    without, one list of chunks with a random text each."""
    ev = self.config.eval
    rng = np.random.default_rng([ev.seed, query_index, ROW_KINDS.index(kind)])
    if self.support_selection == "rices":
      indices = self._neighbours[query_index]
    else:
      indices = rng.choice(min(ev.support_images, len(train)), size=max(self.shots), replace=True)
    images, chunks = [], [[] for _ in (slots or (None,))]
    for i in indices:
      item = train[int(i)]
      images.append(pipeline.check_image(item["image"], int(i), None))
      if slots is None:
        chunks[0].append(self.codec.chunk(chunk_text(item, kind, rng)[0]))
      for out, slot in zip(chunks, slots or ()):
        out.append(self.codec.chunk(f"{item['questions'][slot]} {item['answers'][slot]}"))
    return images, chunks

  def _shots(self, support: list, k: int) -> list:
    """The k-shot prompt's part of a support list: its first k, in prompt order (RICES puts
    the nearest image last, next to the query, as Flamingo's RICES does)."""
    return support[:k][::-1] if self.support_selection == "rices" else support[:k]

  def _eval_data(self) -> dict[str, Any]:
    """Host arrays per k: vqa image float32 `[N, k + 1, H, W, 3]` (support, then the query),
    prompt int32 `[N, 5, P_k]`, prompt_length `[N, 5]`; caption image `[Nc, k + 1, ...]`,
    prompt `[Nc, P_k]`, prompt_length `[Nc]`; answers, question types, references, labels."""
    if self._eval_cache is not None:
      return self._eval_cache
    if self.support_selection == "rices" and self._neighbours is None:
      raise RuntimeError("RICES support needs the vision tower's features: call "
                         "evaluate(params, mesh) (or select_support(params, mesh)) first")
    ev = self.config.eval
    train, test = self._eval_sources()
    length = self._model.max_length
    out = {"vqa": {k: {"image": [], "prompt": [], "prompt_length": []} for k in self.shots},
           "caption": {k: {"image": [], "prompt": [], "prompt_length": []} for k in self.shots},
           "answer": [], "question_type": [], "references": []}
    answer_index = {a: i for i, a in enumerate(SHAPEWORLD_ANSWERS)}
    # RICES asks each support image the query's question type (its slot); random, any.
    per_slot = self.support_selection == "rices"
    for index in range(ev.vqa_images):
      item = test[index]
      query_image = pipeline.check_image(item["image"], index, None)
      support_images, chunk_lists = self._support(
          "vqa", index, train, tuple(range(QUESTIONS_PER_IMAGE)) if per_slot else None)
      if not per_slot:
        chunk_lists = chunk_lists * QUESTIONS_PER_IMAGE
      for k in self.shots:
        prompts = [self.codec.row(self._shots(chunks, k) + [self.codec.chunk(q, close=False)],
                                  length - self.answerer.max_new_tokens,
                                  f"a {k}-shot VQA prompt with its answer")
                   for chunks, q in zip(chunk_lists, item["questions"])]
        rows = out["vqa"][k]
        rows["image"].append(np.stack(self._shots(support_images, k) + [query_image]))
        rows["prompt"].append(np.stack(prompts))
        rows["prompt_length"].append((np.stack(prompts) != self.tokenizer.pad_id).sum(1))
      out["answer"].append([answer_index[a] for a in item["answers"]])
      out["question_type"].append([question_type(s, q) for s, q in enumerate(item["questions"])])
    for index in range(ev.caption_images):
      item = test[index]
      query_image = pipeline.check_image(item["image"], index, None)
      support_images, (support,) = self._support("caption", index, train)
      for k in self.shots:
        prompt = self.codec.row(self._shots(support, k) + [[self.codec.image_id]],
                                length - self.max_caption_tokens,
                                f"a {k}-shot caption prompt with its caption")
        rows = out["caption"][k]
        rows["image"].append(np.stack(self._shots(support_images, k) + [query_image]))
        rows["prompt"].append(prompt)
        rows["prompt_length"].append((prompt != self.tokenizer.pad_id).sum())
      out["references"].append(list(item["captions"]))
    if self.binding_words:
      out["binding"], out["binding_answer"], out["binding_other"], out["binding_type"] = (
          self._binding_eval_rows(train, test))
    for kind in ("vqa", "caption") + (("binding",) if self.binding_words else ()):
      for k in self.shots:
        rows = out[kind][k]
        width = max(int(np.max(rows["prompt_length"])), 1)  # trim the common padding
        rows["image"] = np.stack(rows["image"]).astype(np.float32) / np.float32(255)
        rows["prompt"] = np.stack(rows["prompt"])[..., :width]
        rows["prompt_length"] = np.stack(rows["prompt_length"]).astype(np.int32)
    out["answer"] = np.asarray(out["answer"], np.int32)
    out["question_type"] = np.asarray(out["question_type"], np.int32)
    items = [test[i] for i in range(ev.caption_images)]
    out["labels"] = {key: np.stack([item[key] for item in items]) for key in ATTRIBUTE_LABELS}
    self._eval_cache = out
    return out

  def _binding_eval_rows(self, train, test):
    """Per k {image `[2N, k + 1, H, W, 3]` uint8 list, prompt `[2N, P_k]`, prompt_length}, and
    int32 `[N, 2]` the query's word, another word of its episode, the question type: each of
    the first N = `eval.vqa_images` test images asked its colour then its shape question."""
    ev = self.config.eval
    episodes = BindingEpisodes(answers_by_slot(train), self.binding_words, self.binding_ways)
    rows = {k: {"image": [], "prompt": [], "prompt_length": []} for k in self.shots}
    answer, other, types = [], [], []
    length = self._model.max_length
    for index in range(ev.vqa_images):
      item = test[index]
      query_image = pipeline.check_image(item["image"], index, None)
      answer.append([]), other.append([]), types.append([])
      for slot in BINDING_SLOTS:
        rng = np.random.default_rng([ev.seed, index, len(ROW_KINDS) + slot])
        word, indices, words = episodes.support(rng, slot, item["answers"][slot], max(self.shots))
        support_images = [pipeline.check_image(train[i]["image"], i, None) for i in indices]
        chunks = [self.codec.binding_chunk(train[i]["questions"][slot], w)
                  for i, w in zip(indices, words)]
        query = self.codec.chunk(item["questions"][slot], close=False)
        for k in self.shots:
          prompt = self.codec.row(chunks[:k] + [query], length,
                                  f"a {k}-shot binding prompt")
          rows[k]["image"].append(np.stack(support_images[:k] + [query_image]))
          rows[k]["prompt"].append(prompt)
          rows[k]["prompt_length"].append((prompt != self.tokenizer.pad_id).sum())
        answer[-1].append(word)
        other[-1].append(next(w for w in words if w != word))
        types[-1].append(question_type(slot, item["questions"][slot]))
    return (rows, np.asarray(answer, np.int32), np.asarray(other, np.int32),
            np.asarray(types, np.int32))

  def _eval_sources(self):
    """(the train images support comes from, the test images asked)."""
    ev, data = self.config.eval, self.config.data
    return (shapeworld_source(data, "train", ev.support_images),
            shapeworld_source(data, "test", max(ev.vqa_images, ev.caption_images)))

  def image_features(self, params, images: np.ndarray, mesh: Mesh) -> np.ndarray:
    """float32 `[N, Wv]`: the vision tower's pooled output of host images `[N, H, W, 3]` in
    [0, 1], L2-normalised (RICES's similarity is their dot product)."""
    chunks = sharding.map_in_chunks(functools.partial(self._pooled_fn, params), (images,), mesh,
                                    self.config.eval.batch_size)
    features = np.concatenate([np.asarray(out)[:rows] for rows, out in chunks]).astype(np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)

  def select_support(self, params, mesh: Mesh) -> None:
    """RICES: each test image's `max(shots)` nearest train images (of the first
    `eval.support_images`) by `image_features`, nearest first. Computed once, with the
    params of the first evaluation: Flamingo's vision tower is frozen."""
    train, test = self._eval_sources()
    as_float = lambda source: np.stack([np.asarray(source[i]["image"]) for i in
                                        range(len(source))]).astype(np.float32) / 255
    pool = self.image_features(params, as_float(train), mesh)
    queries = self.image_features(params, as_float(test), mesh)
    similarity = queries @ pool.T
    self._neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :max(self.shots)]

  def evaluators(self) -> dict[str, Any]:
    """{"vqa_{k}shot": VQAEvaluator, "caption_{k}shot": CaptioningEvaluator} per k."""
    if self._evaluators is None:
      data, bs = self._eval_data(), self.config.eval.batch_size
      self._evaluators = {}
      for k in self.shots:
        vqa = data["vqa"][k]
        self._evaluators[f"vqa_{k}shot"] = VQAEvaluator(
            self._decode_answers, vqa, data["answer"], bs, question_types=data["question_type"],
            type_names=QUESTION_TYPES, decode_fn=self._answer_indices)
        caption = data["caption"][k]
        self._evaluators[f"caption_{k}shot"] = CaptioningEvaluator(
            self._generate_captions, self.tokenizer, caption["image"], data["references"], bs,
            attribute_labels=data["labels"], attribute_metrics=shapeworld_attribute_metrics,
            extra_inputs=(caption["prompt"], caption["prompt_length"]))
        if self.binding_words:
          binding = data["binding"][k]
          n, q = data["binding_answer"].shape
          inputs = {key: binding[key].reshape(n, q, *binding[key].shape[1:]) for key in binding}
          self._evaluators[f"binding_{k}shot"] = VQAEvaluator(
              self._binding_words, inputs, data["binding_answer"], bs,
              question_types=data["binding_type"], type_names=QUESTION_TYPES)
    return self._evaluators

  def _decode_answers(self, params, batch) -> jax.Array:
    """Answer tokens int32 `[B, Q, T + 1]` (answer, `<eoc>`, pad) of prompts `[B, Q, P]` about
    the images `[B, k + 1, H, W, 3]` (resampled once per row of images)."""
    prompt = batch["prompt"]
    # Padding rows have prompt length 0: decode them from a lone pad token.
    lengths = jnp.maximum(batch["prompt_length"].reshape(-1), 1)
    tokens = self.answerer.decode(params, batch["image"], prompt.reshape(-1, prompt.shape[-1]),
                                  lengths, prompt.shape[1]).tokens
    return tokens.reshape(prompt.shape[:2] + tokens.shape[-1:])

  def _binding_words(self, params, batch) -> jax.Array:
    """int32 `[B, Q]`: the binding word (in [0, words)) with the largest logit after each
    prompt `[B, Q, P]` about its own images `[B, Q, k + 1, H, W, 3]`: the constrained greedy
    answer, as every answer is one word."""
    prompt, images = batch["prompt"], batch["image"]
    rows = prompt.shape[0] * prompt.shape[1]
    logits = self._model.apply({"params": params}, images.reshape(rows, *images.shape[2:]),
                               prompt.reshape(rows, -1))
    last = jnp.maximum(batch["prompt_length"].reshape(rows) - 1, 0)
    words = logits[jnp.arange(rows), last, self.codec.word_id:
                   self.codec.word_id + self.binding_words]
    return jnp.argmax(words, -1).astype(jnp.int32).reshape(prompt.shape[:2])

  def _answer_indices(self, tokens: np.ndarray) -> np.ndarray:
    return self.answerer.answer_indices(tokens.reshape(-1, tokens.shape[-1])).reshape(
        tokens.shape[:2])

  def _generate_captions(self, params, images, prompt, prompt_length) -> jax.Array:
    """Caption tokens int32 `[B, T]`, EOS then padding, of images `[B, k + 1, H, W, 3]` after
    their prompts `[B, P]`: greedy, `<image>` never chosen, `<eoc>` ends (written as EOS)."""
    cache = self._model.init_cache(params, images, prompt.shape[1] + self.max_caption_tokens)
    step_fn = decoding.banned_tokens_step_fn(functools.partial(self._model.decode_step, params),
                                             self.codec.image_id, self.codec.image_id + 1)
    if self.binding_words:  # binding words are no caption's
      step_fn = decoding.banned_tokens_step_fn(step_fn, self.codec.word_id)
    tokens = decoding.greedy(step_fn, cache, prompt, jnp.maximum(prompt_length, 1),
                             max_new_tokens=self.max_caption_tokens, eos_id=self.codec.eoc_id,
                             pad_id=self.tokenizer.pad_id).tokens
    return jnp.where(tokens == self.codec.eoc_id, self.tokenizer.eos_id, tokens)

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    if self.support_selection == "rices" and self._neighbours is None:
      self.select_support(params, mesh)
    results = prefixed_results(self.evaluators(), params, mesh)
    kinds = ("vqa", "binding") if self.binding_words else ("vqa",)
    for kind in kinds:
      for k in self.shots:
        if k and 0 in self.shots:
          gain, se = paired_gain(self.evaluators()[f"{kind}_{k}shot"].last_correct,
                                 self.evaluators()[f"{kind}_0shot"].last_correct)
          results[f"{kind}_{k}shot_gain"], results[f"{kind}_{k}shot_gain_se"] = gain, se
    if self.binding_words:
      other = self._eval_data()["binding_other"]
      for k in self.shots:
        predictions = self.evaluators()[f"binding_{k}shot"].last_predictions
        results[f"binding_{k}shot_other_word"] = float((predictions == other).mean())
    return results

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    from mmjax.train import plots
    if jax.process_index() != 0:
      return []
    return [plots.loss_curve(workdir)]


def pool_neighbours(features: np.ndarray, k: int) -> np.ndarray:
  """int32 `[P, k]`: each row's k nearest other rows of `features` `[P, E]` by cosine
  similarity, nearest first (itself excluded, also when an identical row ties with it)."""
  indices, _ = top_k_neighbours(features, features, k + 1)
  others = indices != np.arange(len(features))[:, None]
  # Keep the first k entries that are not the row itself (k + 1 candidates hold k others,
  # or k + 1 when a tie pushed the row itself out).
  order = np.argsort(~others, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(indices, order, axis=1).astype(np.int32)


def paired_gain(correct: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
  """(mean accuracy gain, its standard error) of outcomes bool `[N, Q]` over `baseline` on the
  same questions. The SE clusters by row (a test image: its Q questions share one support
  set): std over the N per-image mean differences / sqrt(N)."""
  diff = (np.asarray(correct, np.float64) - np.asarray(baseline, np.float64)).reshape(
      len(correct), -1).mean(1)
  se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
  return float(diff.mean()), se
