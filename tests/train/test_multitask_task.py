"""The OFA multi-task task: its rows against the ShapeWorld annotations they come from, the
bin <-> coordinate round trip, the lambda-weighted loss against a numpy transcription, an
8-device sharded loss, evaluation against the dedicated decoders run row by row, a run through
the one trainer, and bad input."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.shapeworld_inputs import shapeworld_source
from mmjax.metrics.boxes import matched_box_iou
from mmjax.models.vqa import SHAPEWORLD_ANSWERS
from mmjax.train import sharding
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.multitask import TASKS, MultiTask, instruction
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "ofa_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=3", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "optim.warmup_steps=1", "optim.learning_rate=0.01", "num_bins=8",
    "model.vision_encoder.stem_channels=(4,)", "model.vision_encoder.patch_size=4",
    "model.vision_encoder.width=16", "model.vision_encoder.num_layers=1",
    "model.vision_encoder.num_heads=2", "model.width=16", "model.encoder_layers=1",
    "model.decoder_layers=1", "model.num_heads=2",
    "eval.num_images=6", "eval.num_questions=10", "eval.num_expressions=6", "eval.batch_size=4",
]
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(*extra):
  return apply_overrides(load_config(str(CONFIG)), TINY + list(extra))


def _mesh(devices=1):
  return sharding.make_mesh({"data": devices, "fsdp": 1, "tensor": 1},
                            jax.devices()[:devices])


def _words(task, ids):
  """The words of a BOS ... EOS pad row (specials dropped)."""
  return task.tokenizer.decode([i for i in ids if i < task.word_vocab_size])


def test_rows_are_each_tasks_instruction_and_target_from_the_scene():
  task = MultiTask(tiny_config())
  source = shapeworld_source(task.config.data, "train", 50)
  loader = task._loader(source)
  seen = set()
  for index in range(12):
    row, item = loader(index, index), source[index]
    assert row["instruction"].shape == (3, 18) and row["tokens"].shape == (3, 22)
    for k in range(3):
      name, source_ids, target_ids = TASKS[row["task"][k]], row["instruction"][k], row["tokens"][k]
      seen.add(name)
      assert source_ids[0] == target_ids[0] == task.tokenizer.bos_id
      assert row["prompt_length"][k] == 1   # prompt_type "none": BOS alone
      said, target = _words(task, source_ids), _words(task, target_ids)
      if name == "caption":
        assert said == "what does the image describe?"
        assert target in [task.tokenizer.decode(task.tokenizer.encode(c))
                          for c in item["captions"]]
      elif name == "vqa":
        pairs = {(task.tokenizer.decode(task.tokenizer.encode(q)), a)
                 for q, a in zip(item["questions"], item["answers"])}
        assert (said, target) in pairs
      else:
        assert said == task.tokenizer.decode(task.tokenizer.encode(
            f'which region does the text " {item["referring"]} " describe ?'))
        bins = target_ids[1:5] - task.word_vocab_size
        assert target_ids[5] == task.tokenizer.eos_id
        np.testing.assert_array_equal(bins, np.clip(np.floor(item["referring_box"] * 8), 0, 7))
  assert seen == set(TASKS)
  # Task probabilities: a caption-only mixture draws captions only.
  only = MultiTask(tiny_config("tasks.vqa=0.0", "tasks.grounding=0.0"))
  rows = [only._loader(source)(i, i)["task"] for i in range(20)]
  assert np.all(np.concatenate(rows) == TASKS.index("caption"))
  # row_tasks "every": row k is the (k mod n)-th task of positive probability, on every image.
  every = MultiTask(tiny_config("data.row_tasks=every"))
  rows = np.stack([every._loader(source)(i, i)["task"] for i in range(20)])
  np.testing.assert_array_equal(rows, np.tile([0, 1, 2], (20, 1)))
  two = MultiTask(tiny_config("data.row_tasks=every", "data.rows_per_image=5", "tasks.vqa=0.0"))
  rows = np.stack([two._loader(source)(i, i)["task"] for i in range(20)])
  caption, grounding = TASKS.index("caption"), TASKS.index("grounding")
  np.testing.assert_array_equal(rows, np.tile([caption, grounding] * 2 + [caption], (20, 1)))


def test_bins_round_trip_within_half_a_bin():
  task = MultiTask(tiny_config("num_bins=37"))
  loader = task._loader(shapeworld_source(task.config.data, "train", 4))
  boxes = np.random.default_rng(0).uniform(0, 1, (200, 4)).astype(np.float32)
  boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                          np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
  boxes[0] = [0, 0, 1, 1]
  targets = np.stack([loader.grounding("the red circle", box, i)["tokens"][1:5]
                      for i, box in enumerate(boxes)])
  assert targets.min() >= task.word_vocab_size
  assert targets.max() < task.word_vocab_size + 37
  decoded = np.asarray(task.box_decoder.tokens_to_boxes(jnp.asarray(targets)))
  assert np.abs(decoded - boxes).max() <= 0.5 / 37 + 1e-6


def _batch(task, count=8):
  source = shapeworld_source(task.config.data, "train", count)
  loader = task._loader(source)
  rows = [loader(i, i) for i in range(count)]
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _numpy_loss(logits, tokens, tasks, weights, pad_id=0, first_bin=None, num_bins=0,
                sigma=0.0, prompt_length=None):
  """sum_t lambda_t mean_{target tokens of task t's rows} NLL, in float64; with sigma > 0 a
  bin target k is the Gaussian exp(-(j - k)^2 / 2 sigma^2) over the bins j, normalised."""
  logits = np.asarray(logits, np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                               keepdims=True))
  log_probs -= logits.max(-1, keepdims=True)
  losses = []
  for t in range(len(TASKS)):
    nll, count = 0.0, 0
    for r in np.flatnonzero(tasks == t):
      for j in range(tokens.shape[1] - 1):
        target = tokens[r, j + 1]
        if target == pad_id or (prompt_length is not None and j + 1 < prompt_length[r]):
          continue
        if sigma > 0 and first_bin <= target < first_bin + num_bins:
          q = np.exp(-(np.arange(num_bins) - (target - first_bin)) ** 2 / (2 * sigma ** 2))
          nll -= (q / q.sum() * log_probs[r, j, first_bin:first_bin + num_bins]).sum()
        else:
          nll -= log_probs[r, j, target]
        count += 1
    losses.append(nll / max(count, 1))
  return float(np.dot(weights, losses)), losses


def _flat(x):
  """[B, K, ...] -> [B K, ...], image-major (the loss's row order)."""
  return x.reshape(-1, *x.shape[2:])


def _loss_and_logits(task):
  """(params, batch, loss, metrics, teacher-forced logits [B K, L, V]) on random weights."""
  params = nn.unbox(fast_jit(task.init_params)(jax.random.key(0)))
  batch = _batch(task)
  loss, metrics = fast_jit(task.loss_fn)(params, batch, None)
  logits = task.model.apply({"params": params}, batch["image"], _flat(batch["instruction"]),
                            _flat(batch["tokens"]))
  return params, batch, loss, metrics, logits


def test_the_loss_is_the_lambda_weighted_sum_of_per_task_means():
  task = MultiTask(tiny_config("loss_weights.caption=1.0", "loss_weights.vqa=2.0",
                               "loss_weights.grounding=0.5", "bin_sigma=0.0"))  # one-hot bins
  params, batch, loss, metrics, logits = _loss_and_logits(task)
  expected, per_task = _numpy_loss(logits, _flat(batch["tokens"]), _flat(batch["task"]),
                                   [1.0, 2.0, 0.5])
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  for name, value in zip(TASKS, per_task):
    assert float(metrics[f"loss_{name}"]) == pytest.approx(value, rel=1e-5)
  # A task without rows in the batch adds nothing (and no NaN).
  vqa_only = {**batch, "task": np.full_like(batch["task"], TASKS.index("vqa"))}
  loss, metrics = fast_jit(task.loss_fn)(params, vqa_only, None)
  assert float(metrics["loss_caption"]) == 0.0 and np.isfinite(float(loss))


def test_gaussian_bin_targets_apply_to_the_grounding_bins_only():
  task = MultiTask(tiny_config("bin_sigma=1.5", "tasks.grounding=3.0"))
  _, batch, loss, metrics, logits = _loss_and_logits(task)
  args = (logits, _flat(batch["tokens"]), _flat(batch["task"]), [1.0, 1.0, 1.0])
  expected, per_task = _numpy_loss(*args, first_bin=task.word_vocab_size, num_bins=8,
                                   sigma=1.5)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  _, one_hot = _numpy_loss(*args)
  g = TASKS.index("grounding")
  assert float(metrics["loss_grounding"]) == pytest.approx(per_task[g], rel=1e-5)
  assert abs(per_task[g] - one_hot[g]) > 1e-2   # the soft targets changed the grounding loss
  for t, name in enumerate(TASKS):
    if t != g:
      assert float(metrics[f"loss_{name}"]) == pytest.approx(one_hot[t], rel=1e-5)


def test_prev_output_prompts_the_decoder_with_the_instruction():
  """prompt_type="prev_output": rows, loss and every evaluation against the instruction's
  words as the decoder's prompt, built by hand."""
  task = MultiTask(tiny_config("prompt_type=prev_output", "data.context_length=40",
                               "bin_sigma=0.0"))
  tok, pad = task.tokenizer, task.tokenizer.pad_id
  params, batch, loss, _, logits = _loss_and_logits(task)
  for source_ids, tokens, n in zip(_flat(batch["instruction"]), _flat(batch["tokens"]),
                                   _flat(batch["prompt_length"])):
    given = [t for t in source_ids if t != pad]         # BOS + words + EOS
    assert n == len(given) - 1 and list(tokens[:n]) == given[:-1]
    assert tokens[n] != pad  # the target follows
  expected, _ = _numpy_loss(logits, _flat(batch["tokens"]), _flat(batch["task"]), [1.0] * 3,
                            prompt_length=_flat(batch["prompt_length"]))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  unmasked, _ = _numpy_loss(logits, _flat(batch["tokens"]), _flat(batch["task"]), [1.0] * 3)
  assert abs(unmasked - expected) > 1e-2   # the prompt's tokens are not targets

  data = task._eval_data()
  metrics = task.evaluate(params, _mesh())
  prompt_of = lambda row: (lambda ids: (jnp.asarray([ids]), jnp.asarray([len(ids)])))(
      [t for t in row if t not in (pad, tok.eos_id)])
  n, q = data["vqa_answer"].shape
  correct = []
  for i in range(n):
    for j in range(q):
      row = data["vqa_instruction"][i, j]
      prompt, length = prompt_of(row)
      decoded = task.answerer.decode(params, data["image"][i:i + 1], prompt, length,
                                     instruction=jnp.asarray(row[None]))
      correct.append(task.answerer.answer_indices(np.asarray(decoded.tokens))[0]
                     == data["vqa_answer"][i, j])
  assert metrics["vqa_accuracy"] == pytest.approx(np.mean(correct))
  boxes = []
  for i, row in enumerate(data["grounding_instruction"]):
    prompt, length = prompt_of(row)
    boxes.append(np.asarray(task.box_decoder.decode_boxes(
        params, data["image"][i:i + 1], prompt, length, instruction=jnp.asarray(row[None]))))
  iou = np.asarray(matched_box_iou(np.concatenate(boxes), data["box"]))
  assert metrics["grounding_mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)
  # Captions: greedy after BOS + "what does the image describe ?", by hand.
  from mmjax import decoding
  row = data["caption_instruction"]
  prompt, length = prompt_of(row)
  images = jnp.asarray(data["image"][:2])
  cache = task.model.init_cache(params, images, 40, instruction=jnp.asarray(np.stack([row] * 2)))
  step = decoding.banned_tokens_step_fn(functools.partial(task.model.decode_step, params),
                                        task.word_vocab_size)
  by_hand = decoding.greedy(step, cache, jnp.repeat(prompt, 2, 0), jnp.repeat(length, 2),
                            max_new_tokens=40 - prompt.shape[1], eos_id=tok.eos_id,
                            pad_id=pad).tokens
  np.testing.assert_array_equal(task._generate_captions(params, images), by_hand)
  # And the prompt changes what is decoded (else the checks above could not tell).
  plain = MultiTask(tiny_config("data.context_length=40", "bin_sigma=0.0"))
  assert not np.array_equal(plain._generate_captions(params, images), by_hand)


def test_sharded_loss_equals_single_device():
  task = MultiTask(tiny_config())
  boxed = fast_jit(task.init_params)(jax.random.key(0))
  params = nn.unbox(boxed)
  batch = _batch(task)
  single = float(jax.jit(task.loss_fn)(params, batch, None)[0])
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = sharding.logical_shardings(jax.eval_shape(task.init_params, jax.random.key(0)),
                                         mesh)
  assert any("tensor" in jax.tree.leaves(tuple(s.spec)) for s in jax.tree.leaves(shardings))
  placed = jax.device_put(params, shardings)
  sharded = float(jax.jit(task.loss_fn)(placed, sharding.host_batch_to_global(batch, mesh),
                                        None)[0])
  assert sharded == pytest.approx(single, rel=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """3 steps through the one trainer, evaluated at the end."""
  workdir = tmp_path_factory.mktemp("multitask")
  config = tiny_config("loss_weights.vqa=2.0")
  return config, workdir, train(config, workdir, devices=jax.devices()[:1], progress=False)


def test_training_logs_each_tasks_loss_and_their_weighted_sum(trained):
  _, workdir, result = trained
  assert get_task_class("multitask") is MultiTask
  records = read_jsonl(workdir / "train.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  for r in records:
    assert r["loss"] == pytest.approx(r["loss_caption"] + 2 * r["loss_vqa"] + r["loss_grounding"],
                                      rel=1e-5)
  assert {"caption_bleu4", "caption_cider_d", "vqa_accuracy", "vqa_accuracy_count",
          "grounding_acc@0.5", "grounding_mean_iou"} <= set(result.eval_metrics)


def test_evaluation_equals_decoding_each_row_on_its_own(trained):
  """VQA and grounding scores against per-row constrained decoding with the image repeated
  (the evaluator encodes each image once for its 5 questions)."""
  config, _, result = trained
  task, params = MultiTask(config), result.state.params
  data = task._eval_data()
  metrics = task.evaluate(params, _mesh())
  assert metrics == pytest.approx(result.eval_metrics)
  n, q = data["vqa_answer"].shape
  assert (n, q) == (2, 5)
  rows = n * q
  bos, ones = jnp.ones((rows, 1), jnp.int32), jnp.ones((rows,), jnp.int32)
  decoded = task.answerer.decode(params, jnp.repeat(data["image"][:n], q, 0), bos, ones,
                                 instruction=jnp.asarray(data["vqa_instruction"].reshape(rows, -1)))
  answers = task.answerer.answer_indices(np.asarray(decoded.tokens)).reshape(n, q)
  assert metrics["vqa_accuracy"] == pytest.approx(np.mean(answers == data["vqa_answer"]))
  # The dedicated VQA task's test images and answers.
  test = shapeworld_source(config.data, "test", n)
  assert [[SHAPEWORLD_ANSWERS[a] for a in row] for row in data["vqa_answer"]] == [
      list(test[i]["answers"]) for i in range(n)]
  m = len(data["box"])
  boxes = np.concatenate([np.asarray(task.box_decoder.decode_boxes(
      params, data["image"][i:i + 1], bos[:1], ones[:1],
      instruction=jnp.asarray(data["grounding_instruction"][i:i + 1]))) for i in range(m)])
  iou = np.asarray(matched_box_iou(boxes, data["box"]))
  assert metrics["grounding_acc@0.5"] == pytest.approx(np.mean(iou >= 0.5))
  assert metrics["grounding_mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)
  # Captions hold words only, never a location bin.
  tokens = np.asarray(task._generate_captions(params, jnp.asarray(data["image"][:6])))
  assert tokens.max() < task.word_vocab_size


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match=r"tasks names unknown tasks \['ocr'\]; the instruction "
                                       r"tasks are \('caption', 'vqa', 'grounding'\)"):
    config = tiny_config()  # (the CLI's overrides would already refuse the unknown key)
    config.tasks.ocr = 1.0
    MultiTask(config)
  with pytest.raises(ValueError, match="loss_weights must be non-negative"):
    MultiTask(tiny_config("loss_weights.vqa=-1.0"))
  with pytest.raises(ValueError, match="tasks must be non-negative with a positive sum"):
    MultiTask(tiny_config("tasks.caption=0.0", "tasks.vqa=0.0", "tasks.grounding=0.0"))
  with pytest.raises(ValueError, match="eval.num_questions must be a positive multiple of 5"):
    MultiTask(tiny_config("eval.num_questions=7"))
  with pytest.raises(ValueError, match="data.rows_per_image must be >= 1, got 0"):
    MultiTask(tiny_config("data.rows_per_image=0"))
  with pytest.raises(ValueError, match=r"data.row_tasks must be one of \('sampled', 'every'\)"
                                       r".*got 'cycled'"):
    MultiTask(tiny_config("data.row_tasks=cycled"))
  with pytest.raises(ValueError, match="unknown task 'ocr'; the instruction tasks are"):
    instruction("ocr", "read the text")
  task = MultiTask(tiny_config())
  loader = task._loader(shapeworld_source(task.config.data, "train", 4))
  with pytest.raises(ValueError, match=r"example 3: referring_box must be float \[4\] "
                                       r"\(x0, y0, x1, y1\) in \[0, 1\]"):
    loader.grounding("the red circle", [0.2, 0.3, 1.4, 0.9], 3)
  with pytest.raises(ValueError, match="takes 27 tokens with BOS and EOS, more than data.source_length=18"):
    loader.vqa("is there a red circle above " * 4 + "?", "yes")
  with pytest.raises(ValueError, match="answer 'maybe' is not in the answer list"):
    loader.vqa("is there a red circle ?", "maybe")
  with pytest.raises(ValueError, match="has a word outside the vocabulary"):
    loader.vqa("is there a purple circle ?", "yes")
  batch = _batch(task, 2)
  with pytest.raises(ValueError, match=r"instruction has shape \(2, 18\), expected "
                                       r"\[2, data.rows_per_image=3, 18\]"):
    task.check_batch({**batch, "instruction": batch["instruction"][:, 0]}, 5)
  with pytest.raises(ValueError, match=r"task must be int \[2, 3\] in \[0, 3\)"):
    task.check_batch({**batch, "task": batch["task"] + 3}, 5)
  with pytest.raises(ValueError, match=r"prompt_length must be int \[2, 3\] in \[1, "):
    task.check_batch({**batch, "prompt_length": batch["prompt_length"] * 0}, 5)
  with pytest.raises(ValueError, match="prompt_type must be one of"):
    MultiTask(tiny_config("prompt_type=src"))
  with pytest.raises(ValueError, match="target after its instruction prompt takes"):
    MultiTask(tiny_config("prompt_type=prev_output"))._loader(
        shapeworld_source(task.config.data, "train", 4)).caption("a red circle " * 5)
  task.check_batch(batch, 5)
