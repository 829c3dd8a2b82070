"""The VQA task through the one trainer: evaluate() against a recompute from the classifier's
logits, the generative head's constrained evaluation, and bad input."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.vqa import QUESTION_TYPES, VQATask
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "vqa_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=3", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "optim.warmup_steps=1", "optim.learning_rate=0.01",
    "eval.num_examples=20", "eval.batch_size=4",
]
TINY_MODEL = {  # per head (configs/vqa_shapeworld.py:HEAD)
    "classifier": [
        "model.image_encoder.stem_channels=(4,)", "model.image_encoder.patch_size=4",
        "model.image_encoder.width=16", "model.image_encoder.num_layers=1",
        "model.image_encoder.num_heads=2", "model.question_encoder.width=16",
        "model.question_encoder.num_layers=1", "model.question_encoder.num_heads=2",
        "model.hidden_dim=16"],
    "generative": [
        "model.stem_channels=(4,)", "model.patch_size=4", "model.vision_width=16",
        "model.vision_layers=1", "model.vision_heads=2", "model.text_width=16",
        "model.text_layers=1", "model.text_heads=2"],
}
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(*extra, head="classifier"):
  return apply_overrides(load_config(f"{CONFIG}:{head}"), TINY + TINY_MODEL[head] + list(extra))


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """3 steps of the generative head on one device, evaluated (constrained decoding) at the end."""
  workdir = tmp_path_factory.mktemp("vqa")
  config = tiny_config("eval.num_examples=10", "eval.batch_size=2", head="generative")
  return config, workdir, train(config, workdir, devices=jax.devices()[:1], progress=False)


def test_generative_training_runs_and_evaluates(trained):
  _, workdir, result = trained
  assert get_task_class("vqa") is VQATask
  records = read_jsonl(workdir / "train.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 for r in records)
  assert records[-1]["loss"] < records[0]["loss"]  # lr 0.01 on the same kind of rows
  # evaluate() raises if a decoded answer is not in the list; 2 images x 5 questions:
  # count, colour, shape, exists and relation or size.
  metrics = result.eval_metrics
  assert {"accuracy", "accuracy_count", "accuracy_colour", "accuracy_shape",
          "accuracy_exists"} <= set(metrics) <= {"accuracy"} | {f"accuracy_{n}" for n in QUESTION_TYPES}
  assert all(0.0 <= v <= 1.0 for v in metrics.values())
  assert read_jsonl(workdir / "metrics.jsonl")[-1]["accuracy"] == metrics["accuracy"]


def test_classifier_accuracy_equals_a_recompute_from_logits():
  task = VQATask(tiny_config())
  params = fast_jit(task.init_params)(jax.random.key(0))
  params = jax.tree.map(lambda p: p * 3.0, params)  # random, but not all the same answer
  metrics = task.evaluate(params, _mesh())
  data = task._eval_data()
  assert data["image"].shape == (4, 16, 16, 3) and data["question"].shape == (20, 18)
  # The 5 questions of an image are its count, colour, shape, existence, relation/size ones.
  assert (data["question_type"].reshape(4, 5)[:, :4] == np.arange(4)).all()
  logits = fast_jit(task.model.apply)({"params": params}, np.repeat(data["image"], 5, axis=0),
                                      data["question"])
  assert logits.shape == (20, len(task.answers))
  predictions = np.asarray(logits).argmax(1)
  assert len(set(predictions.tolist())) > 1
  correct = predictions == data["answer"]
  np.testing.assert_allclose(metrics["accuracy"], correct.mean(), rtol=1e-6)
  for index, name in enumerate(QUESTION_TYPES):
    rows = data["question_type"] == index
    if rows.any():
      np.testing.assert_allclose(metrics[f"accuracy_{name}"], correct[rows].mean(), rtol=1e-6)
    else:
      assert f"accuracy_{name}" not in metrics


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match=r"model.name must be one of \['captioner', "
                     r"'unified_decoder', 'vqa_classifier'\]"):
    VQATask(tiny_config("model.name=clip"))
  with pytest.raises(ValueError, match=r"vqa_shapeworld.py:HEAD takes HEAD in \('classifier', "
                     r"'generative'\), got 'ranking'"):
    load_config(f"{CONFIG}:ranking")
  with pytest.raises(ValueError, match="eval.num_examples must be a positive multiple of 5"):
    VQATask(tiny_config("eval.num_examples=7"))
  task = VQATask(tiny_config())
  batch = {"image": np.zeros((2, 32, 32, 3), np.float32), "question": np.zeros((2, 18), np.int32)}
  with pytest.raises(ValueError, match=r"image has shape \(2, 32, 32, 3\), expected \[batch, 16"):
    task.check_batch(batch, 0)
  params = jax.eval_shape(task.init_params, jax.random.key(0))
  with pytest.raises(ValueError, match=r"images must be float \[B, H, W, 3\]"):
    jax.eval_shape(lambda p, *args: task.model.apply({"params": p}, *args), params,
                   jnp.zeros((2, 16, 16)), jnp.zeros((2, 18), jnp.int32))
