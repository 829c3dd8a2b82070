"""The interleaved (Flamingo) task: its rows against the ShapeWorld items they come from, the
loss against a numpy cross-entropy, the few-shot prompts against hand-built ones, few-shot VQA
and captioning against decoding by full recomputation, an 8-device sharded loss, a run through
the one trainer (only the Flamingo parts change), and bad input."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.shapeworld_inputs import shapeworld_source
from mmjax.models.flamingo import trainable_mask
from mmjax.models.vqa import SHAPEWORLD_ANSWERS
from mmjax.train import sharding
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks.interleaved import InterleavedTask, _LoadRow
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "flamingo_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=2", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "data.images_per_row=3", "data.context_length=70",
    "optim.warmup_steps=0", "optim.learning_rate=0.01",
    "model.vision_encoder.stem_channels=(4,)", "model.vision_encoder.patch_size=4",
    "model.vision_encoder.width=16", "model.vision_encoder.num_layers=1",
    "model.vision_encoder.num_heads=2", "model.resampler.num_latents=2",
    "model.resampler.num_layers=1", "model.resampler.num_heads=2", "model.width=16",
    "model.num_heads=2", "eval.shots=(0,2,3)", "eval.vqa_images=3", "eval.caption_images=3",
    "eval.support_images=10", "eval.batch_size=2",
]
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(*extra):
  return apply_overrides(load_config(str(CONFIG)), TINY + list(extra))


@pytest.fixture(scope="module")
def task():
  return InterleavedTask(tiny_config())


@pytest.fixture(scope="module")
def params(task):
  """Random weights with every gate opened (at init the gates are 0: the images would not
  reach the text, and the evaluations below would not depend on them)."""
  p = nn.unbox(fast_jit(task.init_params)(jax.random.key(0)))
  leaves = jax.tree_util.tree_leaves_with_path(p)
  rng = np.random.default_rng(0)
  new = [jnp.asarray(rng.normal(size=x.shape), x.dtype) * 0.5
         if any(getattr(k, "key", None) in ("alpha_attn", "alpha_ffw") for k in path) else x
         for path, x in leaves]
  return jax.tree.unflatten(jax.tree.structure(p), new)


def _texts(task, item):
  """{kind: the encoded chunk texts an item can give}."""
  enc = lambda s: tuple(task.tokenizer.encode(s))
  return {"vqa": {enc(f"{q} {a}") for q, a in zip(item["questions"], item["answers"])},
          "caption": {enc(c) for c in item["captions"]}}


def test_rows_are_bos_then_one_chunk_per_image_of_that_images_own_text(task):
  source = shapeworld_source(task.config.data, "train", 40)
  load = _LoadRow(source, task.codec, task.config)
  images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
  image_id, eoc = task.codec.image_id, task.codec.eoc_id
  kinds = set()
  for position in range(30):
    index = position % len(source)
    row = load(position, index)
    assert row["image"].shape == (3, 16, 16, 3) and row["tokens"].shape == (70,)
    tokens = list(row["tokens"][row["tokens"] != task.tokenizer.pad_id])
    assert tokens[0] == task.tokenizer.bos_id and tokens.count(image_id) == 3
    starts = [i for i, t in enumerate(tokens) if t == image_id]
    chunks = [tokens[a:b] for a, b in zip(starts, starts[1:] + [len(tokens)])]
    row_kinds = set()
    for j, chunk in enumerate(chunks):
      assert chunk[-1] == eoc and eoc not in chunk[:-1]
      # Which train item is image j: found by its pixels.
      owner = np.flatnonzero((images == np.round(row["image"][j] * 255)).all((1, 2, 3)))
      assert len(owner) >= 1 and (j > 0 or index in owner)
      texts = _texts(task, source[int(owner[0])])
      row_kinds |= {kind for kind, options in texts.items() if tuple(chunk[1:-1]) in options}
    assert len(row_kinds) == 1, row_kinds  # one kind per row
    kinds |= row_kinds
  assert kinds == {"vqa", "caption"}


def test_loss_is_a_numpy_cross_entropy_without_image_and_pad_targets(task, params):
  source = shapeworld_source(task.config.data, "train", 8)
  load = _LoadRow(source, task.codec, task.config)
  rows = [load(i, i) for i in range(4)]
  batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
  loss, _ = jax.jit(task.loss_fn)(params, batch, None)
  logits = np.asarray(task.model.apply({"params": params}, batch["image"], batch["tokens"]),
                      np.float64)
  nll, count = 0.0, 0
  for b in range(4):
    for t in range(69):
      target = batch["tokens"][b, t + 1]
      if target in (task.tokenizer.pad_id, task.codec.image_id):
        continue
      z = logits[b, t] - logits[b, t].max()
      nll -= z[target] - np.log(np.exp(z).sum())
      count += 1
  assert float(loss) == pytest.approx(nll / count, rel=1e-5)


def test_few_shot_prompts_are_the_support_chunks_then_the_query(task):
  data = task._eval_data()
  train_items = shapeworld_source(task.config.data, "train", 10)
  test_items = shapeworld_source(task.config.data, "test", 3)
  image_id, eoc, bos = task.codec.image_id, task.codec.eoc_id, task.tokenizer.bos_id
  for n in range(3):
    item = test_items[n]
    largest = data["vqa"][3]
    for k in (0, 2, 3):
      vqa = data["vqa"][k]
      # The query image last, after the largest k's first k support images.
      np.testing.assert_array_equal(np.round(vqa["image"][n, -1] * 255), item["image"])
      np.testing.assert_array_equal(vqa["image"][n, :k], largest["image"][n, :k])
      for q, question in enumerate(item["questions"]):
        row = list(vqa["prompt"][n, q, :vqa["prompt_length"][n, q]])
        assert (vqa["prompt"][n, q, len(row):] == task.tokenizer.pad_id).all()
        query = [image_id, *task.tokenizer.encode(question)]
        assert row[0] == bos and row[-len(query):] == query
        support = row[1:len(row) - len(query)]
        assert support.count(image_id) == k and support.count(eoc) == k
        chunks = np.split(np.array(support), np.flatnonzero(np.array(support) == eoc)[:-1] + 1)
        for j, chunk in enumerate(chunks if k else []):
          owner = [i for i in range(10)
                   if np.array_equal(train_items[i]["image"], np.round(vqa["image"][n, j] * 255))]
          assert owner and tuple(chunk[1:-1]) in _texts(task, train_items[owner[0]])["vqa"]
    caption = data["caption"][2]
    row = list(caption["prompt"][n, :caption["prompt_length"][n]])
    assert row[0] == bos and row[-1] == image_id and row.count(image_id) == 3
    assert row.count(eoc) == 2


def test_rices_support_is_the_nearest_train_images_by_the_vision_tower_nearest_last(params):
  from mmjax.models import build_model
  task = InterleavedTask(tiny_config("eval.support_selection=rices"))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  with pytest.raises(RuntimeError, match="RICES support needs"):
    task._eval_data()
  task.select_support(params, mesh)
  data = task._eval_data()
  train_items = shapeworld_source(task.config.data, "train", 10)
  test_items = shapeworld_source(task.config.data, "test", 3)
  # By hand: the vision tower alone on the same weights, its pooled output, cosine similarity.
  tower = build_model(task.config.model.vision_encoder)
  pooled = lambda items: np.stack([np.asarray(tower.apply(
      {"params": params["vision_encoder"]}, np.asarray(it["image"], np.float32)[None] / 255)[1])[0]
      for it in items])
  pool, queries = pooled([train_items[i] for i in range(10)]), pooled(
      [test_items[i] for i in range(3)])
  pool /= np.linalg.norm(pool, axis=1, keepdims=True)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  eoc = task.codec.eoc_id
  for n in range(3):
    nearest = np.argsort(-(queries[n] @ pool.T))[:3]
    for k in (2, 3):
      vqa = data["vqa"][k]
      expected = nearest[:k][::-1]  # the nearest last
      for j, i in enumerate(expected):
        np.testing.assert_array_equal(np.round(vqa["image"][n, j] * 255), train_items[int(i)]["image"])
      for q in range(5):
        row = vqa["prompt"][n, q, :vqa["prompt_length"][n, q]]
        ends = np.flatnonzero(row == eoc)
        chunks = np.split(row[1:ends[-1] + 1], ends[:-1])
        for chunk, i in zip(chunks, expected):
          item = train_items[int(i)]  # asked its question of the same slot
          text = f"{item['questions'][q]} {item['answers'][q]}"
          assert list(chunk[1:-1]) == task.tokenizer.encode(text)


def test_few_shot_vqa_equals_the_argmax_of_a_full_forward_over_the_answers(task, params):
  """ShapeWorld answers are one word each, so the constrained greedy answer is the argmax over
  the answers' tokens of the logits after the prompt; here from an uncached forward pass."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  results = task.evaluate(params, mesh)
  data = task._eval_data()
  answer_ids = np.array([task.tokenizer.encode(a)[0] for a in SHAPEWORLD_ANSWERS])
  assert all(len(task.tokenizer.encode(a)) == 1 for a in SHAPEWORLD_ANSWERS)
  accuracies, outcomes = [], {}
  for k in (0, 2, 3):
    vqa = data["vqa"][k]
    correct = []
    for n in range(3):
      images = np.repeat(vqa["image"][n:n + 1], 5, axis=0)
      logits = np.asarray(task.model.apply({"params": params}, images, vqa["prompt"][n]))
      last = logits[np.arange(5), vqa["prompt_length"][n] - 1]
      correct.append(answer_ids[last[:, answer_ids].argmax(1)] == answer_ids[data["answer"][n]])
    assert results[f"vqa_{k}shot_accuracy"] == pytest.approx(np.mean(correct))
    accuracies.append(np.mean(correct))
    outcomes[k] = np.array(correct, float)
  assert len(set(accuracies)) > 1 or accuracies[0] not in (0.0, 1.0)  # the images matter
  # The paired gain over 0 shots, its SE clustered by test image, by hand.
  for k in (2, 3):
    per_image = [(outcomes[k][n] - outcomes[0][n]).mean() for n in range(3)]
    assert results[f"vqa_{k}shot_gain"] == pytest.approx(accuracies[(0, 2, 3).index(k)] -
                                                         accuracies[0])
    mean = sum(per_image) / 3
    by_hand = (sum((d - mean) ** 2 for d in per_image) / 2) ** 0.5 / 3 ** 0.5
    assert results[f"vqa_{k}shot_gain_se"] == pytest.approx(by_hand)
  assert {f"caption_{k}shot_bleu4" for k in (0, 2, 3)} <= set(results)


def test_few_shot_captions_equal_greedy_decoding_by_full_recomputation(task, params):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  data = task._eval_data()["caption"][2]
  evaluator = task.evaluators()["caption_2shot"]
  captions = evaluator.generate(params, data["image"], mesh, data["prompt"],
                                data["prompt_length"])
  forward = jax.jit(lambda images, tokens: task.model.apply({"params": params}, images, tokens))
  for n in range(3):
    row = list(data["prompt"][n, :data["prompt_length"][n]])
    words = []
    for _ in range(task.max_caption_tokens):
      logits = np.array(forward(data["image"][n:n + 1], np.array([row], np.int32)))[0, -1]
      logits[task.codec.image_id] = -np.inf
      token = int(logits.argmax())
      if token == task.codec.eoc_id:
        break
      words.append(token)
      row.append(token)
    assert captions[n] == task.tokenizer.decode(words)


def test_paired_gain_clusters_the_standard_error_by_test_image():
  from mmjax.train.tasks.interleaved import paired_gain
  rng = np.random.default_rng(0)
  baseline = rng.random((40, 5)) < 0.6
  better = baseline | (rng.random((40, 5)) < 0.2)
  gain, se = paired_gain(better, baseline)
  per_image = (better.astype(float) - baseline).mean(1)
  assert gain == pytest.approx(better.mean() - baseline.mean())
  by_hand = np.sqrt(((per_image - per_image.mean()) ** 2).sum() / 39 / 40)
  assert se == pytest.approx(by_hand) and se > 0
  # Questions of one image that move together: clustering makes the SE larger than treating
  # the 200 questions as independent would.
  together = np.repeat(rng.random((40, 1)) < 0.3, 5, axis=1)
  _, clustered = paired_gain(baseline | together, baseline)
  flat = (baseline | together).astype(float).ravel() - baseline.ravel()
  assert clustered > flat.std(ddof=1) / np.sqrt(200)


def test_sharded_loss_equals_single_device(task, params):
  source = shapeworld_source(task.config.data, "train", 8)
  load = _LoadRow(source, task.codec, task.config)
  rows = [load(i, i) for i in range(8)]
  batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
  single = float(jax.jit(task.loss_fn)(params, batch, None)[0])
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.logical_shardings(jax.eval_shape(task.init_params, jax.random.key(0)),
                                         mesh)
  placed = jax.device_put(params, shardings)
  sharded = float(jax.jit(task.loss_fn)(placed, sharding.host_batch_to_global(batch, mesh),
                                        None)[0])
  assert sharded == pytest.approx(single, rel=1e-5)


def test_a_run_changes_only_the_resampler_gates_and_new_tokens(tmp_path):
  config = tiny_config("eval_every=2")
  result = train(config, tmp_path, devices=jax.devices()[:1], progress=False)
  # The trainer's init, compiled as the trainer compiles it (no fast_jit: at another XLA
  # optimisation level the initialisers' floats may differ in the last bit).
  initial = nn.unbox(jax.jit(InterleavedTask(config).init_params)(jax.random.key(config.seed)))
  mask = trainable_mask(initial)
  moved = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)),
                       initial, nn.unbox(result.state.params))
  for (path, trains), (_, changed) in zip(jax.tree_util.tree_leaves_with_path(mask),
                                          jax.tree_util.tree_leaves_with_path(moved)):
    if not trains:
      assert not changed, jax.tree_util.keystr(path)
  assert any(jax.tree.leaves(moved))
  metrics = read_jsonl(tmp_path / "metrics.jsonl")[-1]
  assert {"vqa_0shot_accuracy", "vqa_3shot_accuracy_count", "caption_2shot_cider_d",
          "caption_0shot_colour_accuracy"} <= set(metrics), sorted(metrics)


def test_bad_input_fails_clearly():
  with pytest.raises(ValueError, match="8-shot VQA prompt.*context_length"):
    InterleavedTask(tiny_config("eval.shots=(0,8)", "model.max_length=80"))._eval_data()
  with pytest.raises(ValueError, match="data.row_kinds"):
    InterleavedTask(tiny_config("data.row_kinds.vqa=-1.0"))
  with pytest.raises(ValueError, match="exceeds the LM's model.max_length"):
    InterleavedTask(tiny_config("model.max_length=64"))
  with pytest.raises(ValueError, match="eval.shots"):
    InterleavedTask(tiny_config("eval.shots=(2,2)"))
  with pytest.raises(ValueError, match="model.name must be 'flamingo'"):
    InterleavedTask(tiny_config("model.name=captioner"))


def test_retrieval_rows_are_the_nearest_pool_images_nearest_last_asking_one_slot(task):
  source = shapeworld_source(task.config.data, "train", 12)
  images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
  neighbours = np.array([[(q + 1) % 6, (q + 3) % 6, (q + 4) % 6] for q in range(6)])  # pool 6
  load = _LoadRow(source, task.codec, task.config, neighbours, rices_fraction=1.0)
  eoc, seen_kinds = task.codec.eoc_id, set()
  for position in range(12):
    index = position % len(source)
    row = load(position, index)
    query = index % 6
    expected = [neighbours[query, 1], neighbours[query, 0], query]  # images_per_row 3
    for j, i in enumerate(expected):
      np.testing.assert_array_equal(np.round(row["image"][j] * 255), images[i])
    tokens = list(row["tokens"][row["tokens"] != task.tokenizer.pad_id])
    starts = [i for i, t in enumerate(tokens) if t == task.codec.image_id]
    ends = [i for i, t in enumerate(tokens) if t == eoc]
    assert len(starts) == len(ends) == 3
    chunks = [tokens[a + 1:b] for a, b in zip(starts, ends)]
    slots = []
    for chunk, i in zip(chunks, expected):
      item = source[int(i)]
      vqa = [s for s in range(5) if chunk == task.tokenizer.encode(
          f"{item['questions'][s]} {item['answers'][s]}")]
      captions = [c for c in item["captions"] if chunk == task.tokenizer.encode(c)]
      assert vqa or captions
      slots.append(vqa)
      seen_kinds.add("vqa" if vqa else "caption")
    if slots[0]:  # a VQA row: one slot shared by all its chunks
      assert set.intersection(*map(set, slots)), slots
  assert seen_kinds == {"vqa", "caption"}
  # fraction 0: the random rows, draw for draw.
  plain, off = _LoadRow(source, task.codec, task.config), _LoadRow(
      source, task.codec, task.config, neighbours, rices_fraction=0.0)
  for position in range(5):
    a, b = plain(position, position), off(position, position)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_pool_neighbours_exclude_the_row_itself_even_on_ties():
  from mmjax.train.tasks.interleaved import pool_neighbours
  rng = np.random.default_rng(0)
  features = rng.normal(size=(9, 5)).astype(np.float32)
  features[4] = features[7]  # a duplicate: 4 and 7 tie with each other and themselves
  got = pool_neighbours(features, 3)
  unit = features / np.linalg.norm(features, axis=1, keepdims=True)
  similarity = unit @ unit.T
  for p in range(9):
    assert p not in got[p]
    others = [i for i in np.argsort(-similarity[p], kind="stable") if i != p]
    np.testing.assert_allclose(similarity[p, got[p]], similarity[p, others[:3]], rtol=1e-5)
  assert got[4, 0] == 7 and got[7, 0] == 4


def test_training_neighbours_use_the_warm_started_tower(tmp_path):
  """The neighbours of a run with retrieval rows are those of the source run's tower (here a
  tiny Flamingo run's of another seed, so not this run's own initial tower, copied in by
  init_from.vision), by hand."""
  from mmjax.models import build_model
  from mmjax.train.restore import restore_params
  source_config = tiny_config("total_steps=1", "seed=1")
  train(source_config, tmp_path / "source", devices=jax.devices()[:1], progress=False)
  config = tiny_config("data.rices_rows.fraction=0.5", "data.rices_rows.pool_images=8",
                       f"init_from.vision.workdir={tmp_path / 'source'}",
                       "init_from.vision.params=('vision_encoder:vision_encoder',)")
  task = InterleavedTask(config)
  with pytest.raises(RuntimeError, match="set_mesh"):
    task.training_neighbours()
  task.set_mesh(sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  got = task.training_neighbours()
  tower_params = restore_params(source_config, tmp_path / "source", devices=jax.devices()[:1],
                                read_only=True).params["vision_encoder"]
  tower = build_model(source_config.model.vision_encoder)
  pool = shapeworld_source(config.data, "train", 8)
  pooled = np.stack([np.asarray(tower.apply({"params": tower_params}, np.asarray(
      pool[i]["image"], np.float32)[None] / 255)[1])[0] for i in range(8)])
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  similarity = pooled @ pooled.T
  assert got.shape == (8, 2)
  for p in range(8):
    others = [i for i in np.argsort(-similarity[p], kind="stable") if i != p]
    np.testing.assert_allclose(similarity[p, got[p]], similarity[p, others[:2]], atol=1e-5)
  with pytest.raises(ValueError, match="init_from.vision.workdir"):
    InterleavedTask(tiny_config("data.rices_rows.fraction=0.5")).training_neighbours()
  with pytest.raises(ValueError, match="rices_rows.fraction must be in"):
    InterleavedTask(tiny_config("data.rices_rows.fraction=1.5"))


BINDING = ["data.binding.words=4", "data.row_kinds.binding=1.0", "data.binding.pool_images=40",
           "eval.support_images=80", "eval.vqa_images=3", "eval.caption_images=1"]


@pytest.fixture(scope="module")
def binding_task():
  return InterleavedTask(tiny_config(*BINDING))


def _owner(items, image):
  """The index of the item whose pixels `image` (float in [0, 1]) are."""
  owners = [i for i in range(len(items))
            if np.array_equal(items[i]["image"], np.round(np.asarray(image) * 255))]
  assert len(owners) == 1, owners
  return owners[0]


def _chunks(row, eoc):
  row = np.asarray(row)
  ends = np.flatnonzero(row == eoc)
  return np.split(row[1:ends[-1] + 1], ends[:-1])  # after BOS: split after each <eoc>


def test_binding_rows_bind_each_answer_to_one_fresh_word_per_row(binding_task):
  from mmjax.train.tasks.binding import BindingEpisodes, answers_by_slot
  task = binding_task
  pool = shapeworld_source(task.config.data, "train", 40)
  load = _LoadRow(shapeworld_source(task.config.data, "train", 100), task.codec, task.config,
                  binding=BindingEpisodes(answers_by_slot(pool), 4, 2))
  word_ids = range(task.codec.word_id, task.codec.word_id + 4)
  words_of = {}   # (slot, answer) -> the words it was bound to, over the rows
  kinds = set()
  for position in range(40):
    row = load(position, position % 100)
    tokens = row["tokens"][row["tokens"] != task.tokenizer.pad_id]
    if not set(tokens.tolist()) & set(word_ids):
      kinds.add("other")
      continue
    kinds.add("binding")
    binding = {}   # this row's answer -> word
    slots = set()
    for j, chunk in enumerate(_chunks(tokens, task.codec.eoc_id)):
      item = pool[_owner(pool, row["image"][j])]    # every image from the binding pool
      assert chunk[0] == task.codec.image_id and chunk[-1] == task.codec.eoc_id
      word = int(chunk[-2])
      assert word in word_ids
      slot = [s for s in (1, 2) if task.tokenizer.encode(item["questions"][s]) == list(chunk[1:-2])]
      assert slot, "the chunk asks its own image's colour or shape question"
      slots.add(slot[0])
      answer = item["answers"][slot[0]]
      assert binding.setdefault(answer, word) == word      # one word per answer ...
      words_of.setdefault((slot[0], answer), set()).add(word)
    assert len(slots) == 1                                  # one question slot per row
    assert len(set(binding.values())) == len(binding) <= 2  # ... distinct words, 2-way
  assert kinds == {"binding", "other"}
  assert max(len(w) for w in words_of.values()) > 1         # drawn afresh per row


def test_binding_answers_equal_the_argmax_over_the_words_of_a_full_forward(binding_task, params):
  task = binding_task
  p = nn.unbox(fast_jit(task.init_params)(jax.random.key(0)))
  # The fixture's weights (gates opened); the new-token rows, 4 more here, random (at init the
  # head is 0 and every binding word's logit equal).
  rng = np.random.default_rng(1)
  p = jax.tree.map(lambda a, b: b if a.shape == b.shape else
                   jnp.asarray(rng.normal(size=a.shape), a.dtype), p, params)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  results = task.evaluate(p, mesh)
  data = task._eval_data()
  train_items = shapeworld_source(task.config.data, "train", 80)
  test_items = shapeworld_source(task.config.data, "test", 3)
  words = np.arange(task.codec.word_id, task.codec.word_id + 4)
  outcomes = {}
  for k in (0, 2, 3):
    rows = data["binding"][k]
    logits = np.asarray(task.model.apply({"params": p}, rows["image"], rows["prompt"]))
    last = logits[np.arange(6), rows["prompt_length"] - 1][:, words].argmax(1).reshape(3, 2)
    assert len(np.unique(last)) > 1    # the words' logits differ, so the argmax tells
    np.testing.assert_array_equal(task.evaluators()[f"binding_{k}shot"].last_predictions, last)
    outcomes[k] = last == data["binding_answer"]
    assert results[f"binding_{k}shot_accuracy"] == pytest.approx(outcomes[k].mean())
    assert results[f"binding_{k}shot_other_word"] == pytest.approx(
        (last == data["binding_other"]).mean())
    for n in range(3):
      for s, slot in enumerate((1, 2)):
        item, r = test_items[n], 2 * n + s
        prompt = rows["prompt"][r, :rows["prompt_length"][r]]
        query = [task.codec.image_id, *task.tokenizer.encode(item["questions"][slot])]
        assert list(prompt[-len(query):]) == query
        np.testing.assert_array_equal(np.round(rows["image"][r, -1] * 255), item["image"])
        bound = {}
        for j, chunk in enumerate(_chunks(prompt[:-len(query)], task.codec.eoc_id) if k else []):
          support = train_items[_owner(train_items, rows["image"][r, j])]
          assert list(chunk[1:-2]) == task.tokenizer.encode(support["questions"][slot])
          assert bound.setdefault(support["answers"][slot], int(chunk[-2])) == chunk[-2]
        if k >= 2:   # every answer of the 2-way episode shown; the query's own bound to its word
          assert len(bound) == 2 and bound[item["answers"][slot]] == (
              task.codec.word_id + data["binding_answer"][n, s])
          assert set(bound.values()) == {task.codec.word_id + data["binding_answer"][n, s],
                                         task.codec.word_id + data["binding_other"][n, s]}
  gain = (outcomes[2].astype(float) - outcomes[0]).mean(1)
  assert results["binding_2shot_gain"] == pytest.approx(gain.mean())


def test_binding_bad_input_fails_clearly():
  with pytest.raises(ValueError, match="need binding words"):
    InterleavedTask(tiny_config("data.row_kinds.binding=1.0"))
  with pytest.raises(ValueError, match="ways >= 2 and words >= ways"):
    InterleavedTask(tiny_config("data.binding.words=2", "data.binding.ways=3"))
  with pytest.raises(ValueError, match="fewer than ways=2"):
    InterleavedTask(tiny_config("data.binding.words=4", "eval.support_images=1"))._eval_data()
  from mmjax.train.tasks.binding import BindingEpisodes
  index = {1: {"red": np.array([0]), "blue": np.array([1])},
           2: {"circle": np.array([0]), "star": np.array([1])}}
  with pytest.raises(ValueError, match="2 answers to question slot 1"):
    BindingEpisodes(index, words=4, ways=3)
  with pytest.raises(KeyError, match="no image answering 'green'"):
    BindingEpisodes(index, words=4, ways=2).support(np.random.default_rng(0), 1, "green", 2)
