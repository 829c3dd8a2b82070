"""The captioning task through the one trainer: eval metrics against a recompute with a naive
(cache-free) greedy decoder, bad input. (Attribute accuracies against hand counts:
tests/metrics/test_caption_attributes.py.)

The 8-device (data=4, fsdp=2) comparison is left out: a second trainer run with its own
compilations did not fit the file's 40 s budget (tests/train/test_trainer.py covers the
trainer's sharding)."""
import jax
import numpy as np
import pytest

from mmjax import metrics
from mmjax.data import shapeworld
from mmjax.data.tokenizer import split_words
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.captioning import CaptionTask, shapeworld_attribute_metrics
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "caption_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=3", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=12", "model.stem_channels=(4,)",
    "model.patch_size=4", "model.vision_width=16", "model.vision_layers=1",
    "model.vision_heads=2", "model.text_width=16", "model.text_layers=1", "model.text_heads=2",
    "optim.warmup_steps=1",
    "optim.learning_rate=0.01", "eval.num_images=6", "eval.batch_size=4",
]
EVAL_KEYS = {"eval_loss", "bleu4", "cider_d", "object_accuracy", "shape_accuracy",
             "colour_accuracy", "size_accuracy", "single_object_accuracy"}


def tiny_config(*extra):
  return apply_overrides(load_config(CONFIG), TINY + list(extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """3 steps on one device, evaluated (greedy captions of 6 test images in chunks of 4)."""
  workdir = tmp_path_factory.mktemp("caption")
  config = tiny_config()
  return config, workdir, train(config, workdir, devices=jax.devices()[:1], progress=False)


def _naive_greedy(task, params, images, length):
  """Greedy captions by full causal forward passes (no KV cache, no decoding library)."""
  tok = task.tokenizer
  tokens = np.full((len(images), length), tok.pad_id, np.int32)
  tokens[:, 0] = tok.bos_id
  forward = jax.jit(lambda t: task.model.apply({"params": params}, images, t))
  done = np.zeros(len(images), bool)
  for t in range(length - 1):
    next_token = np.asarray(forward(tokens))[:, t].argmax(-1)
    tokens[:, t + 1] = np.where(done, tok.pad_id, next_token)
    done |= next_token == tok.eos_id
  return [tok.decode(row[1:]) for row in tokens]


def test_training_runs_and_evaluates(trained):
  _, workdir, result = trained
  assert get_task_class("captioning") is CaptionTask
  records = read_jsonl(workdir / "train.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and 0 <= r["token_accuracy"] <= 1 for r in records)
  assert records[-1]["loss"] < records[0]["loss"]
  metrics_ = result.eval_metrics
  assert set(metrics_) == EVAL_KEYS  # the 6 test images include single-object ones
  assert all(np.isfinite(v) for v in metrics_.values())
  assert metrics_["eval_loss"] > 0 and metrics_["cider_d"] >= 0
  assert all(0 <= metrics_[k] <= 1 for k in EVAL_KEYS - {"eval_loss", "cider_d"})
  assert read_jsonl(workdir / "metrics.jsonl")[-1]["bleu4"] == metrics_["bleu4"]
  assert (workdir / "captions.png").stat().st_size > 0


def test_eval_metrics_equal_a_recompute_from_naive_greedy_captions(trained):
  config, _, result = trained
  task = CaptionTask(config)
  params = result.state.params
  data = task._eval_data()
  assert data["image"].shape == (6, 16, 16, 3) and data["text"].shape == (30, 12)
  assert all(len(refs) == 5 for refs in data["references"])
  captions = _naive_greedy(task, params, data["image"], config.data.context_length)
  got = result.eval_metrics
  np.testing.assert_allclose(got["bleu4"], metrics.corpus_bleu(captions, data["references"]) / 100,
                             rtol=1e-9)
  np.testing.assert_allclose(got["cider_d"], metrics.cider_d(captions, data["references"]),
                             rtol=1e-9)
  words = [split_words(caption) for caption in captions]
  said_as = {"size": shapeworld.SIZES, "colour": shapeworld.COLOURS, "shape": shapeworld.SHAPES}
  for key, value in metrics.attribute_metrics(words, data, said_as).items():
    assert got[key] == value, key


def test_canonical_captions_name_every_object():
  # ShapeWorld's caption 0 lists every object as "a <size> <colour> <shape>".
  task = CaptionTask(tiny_config())
  data = task._eval_data()
  canonical = [references[0] for references in data["references"]]
  labels = task.evaluators()["captioning"].attribute_labels
  assert shapeworld_attribute_metrics(canonical, labels) == {
      "object_accuracy": 1.0, "shape_accuracy": 1.0, "colour_accuracy": 1.0,
      "size_accuracy": 1.0, "single_object_accuracy": 1.0}


def test_bad_batches_raise(trained):
  task = CaptionTask(trained[0])
  tok = task.tokenizer
  text = tok.encode_batch(["a small red circle."] * 2, 12)
  good = {"image": np.zeros((2, 16, 16, 3), np.float32), "text": text}
  task.check_batch(good, 0)
  with pytest.raises(ValueError, match=r"image has shape \(2, 32, 32, 3\), expected \[batch, 16"):
    task.check_batch({**good, "image": np.zeros((2, 32, 32, 3), np.float32)}, 5)
  empty = text.copy()
  empty[1, 1:] = tok.pad_id
  empty[1, 1] = tok.eos_id
  with pytest.raises(ValueError, match=r"text rows \[1\] hold an empty caption"):
    task.check_batch({**good, "text": empty}, 0)
  with pytest.raises(ValueError, match="text has shape"):
    task.check_batch({**good, "text": text[:, :10]}, 0)
  with pytest.raises(ValueError, match="num_beams must be >= 1"):
    CaptionTask(tiny_config("eval.num_beams=0"))
