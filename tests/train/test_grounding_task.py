"""The grounding task through the one trainer: evaluate() against a recompute with
mmjax.metrics.boxes, the coordinate-token head's decoding and loss, and bad input."""
import functools

import jax
import numpy as np
import pytest

from mmjax.metrics.boxes import matched_box_iou
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.grounding import GroundingTask
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "grounding_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=3", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "optim.warmup_steps=1", "optim.learning_rate=0.01",
    "eval.num_examples=12", "eval.batch_size=8",
]
TINY_MODEL = {  # per head (configs/grounding_shapeworld.py:HEAD)
    "regression": [
        "model.image_encoder.stem_channels=(4,)", "model.image_encoder.patch_size=4",
        "model.image_encoder.width=16", "model.image_encoder.num_layers=1",
        "model.image_encoder.num_heads=2", "model.text_encoder.width=16",
        "model.text_encoder.num_layers=1", "model.text_encoder.num_heads=2",
        "model.hidden_dim=16"],
    "tokens": [
        "model.stem_channels=(4,)", "model.patch_size=4", "model.vision_width=16",
        "model.vision_layers=1", "model.vision_heads=2", "model.text_width=16",
        "model.text_layers=1", "model.text_heads=2", "num_bins=8"],
}
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(*extra, head="regression"):
  return apply_overrides(load_config(f"{CONFIG}:{head}"), TINY + TINY_MODEL[head] + list(extra))


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """3 regression-head steps on one device, evaluated at the end."""
  workdir = tmp_path_factory.mktemp("grounding")
  config = tiny_config()
  return config, workdir, train(config, workdir, devices=jax.devices()[:1], progress=False)


def test_training_runs_and_logs(trained):
  _, workdir, result = trained
  assert get_task_class("grounding") is GroundingTask
  records = read_jsonl(workdir / "train.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and -1 <= r["giou"] <= 1 and 0 <= r["iou"] <= 1
             for r in records)
  assert records[0]["loss"] == pytest.approx(
      5 * records[0]["l1"] + 2 * (1 - records[0]["giou"]), rel=1e-5)
  assert set(result.eval_metrics) == {"acc@0.5", "acc@0.75", "mean_iou"}


def test_evaluate_equals_a_recompute_from_predicted_boxes(trained):
  config, _, result = trained
  task = GroundingTask(config)  # fresh task: same test examples, same params
  data = task._eval_data()
  assert data["image"].shape == (12, 16, 16, 3) and data["box"].shape == (12, 4)
  boxes = np.asarray(fast_jit(task.model.apply)({"params": result.state.params}, data["image"],
                                                data["expression"]))
  np.testing.assert_allclose(task.predict(result.state.params, _mesh()), boxes, atol=1e-5)
  iou = np.asarray(matched_box_iou(boxes, data["box"]))
  metrics = task.evaluate(result.state.params, _mesh())
  assert metrics == pytest.approx(result.eval_metrics)
  assert metrics["acc@0.5"] == pytest.approx(np.mean(iou >= 0.5))
  assert metrics["acc@0.75"] == pytest.approx(np.mean(iou >= 0.75))
  assert metrics["mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)


def test_tokens_head_trains_and_decodes_only_coordinates():
  task = GroundingTask(tiny_config("eval.num_examples=8", head="tokens"))
  data = task._eval_data()
  v, bins = task.tokenizer.vocab_size, task.num_bins
  rows = np.arange(8)
  box_tokens = data["tokens"][rows[:, None], data["prompt_length"][:, None] + np.arange(4)]
  np.testing.assert_array_equal(box_tokens - v, np.clip(np.floor(data["box"] * bins), 0, bins - 1))
  params = fast_jit(task.init_params)(jax.random.key(0))
  batch = {k: data[k] for k in ("image", "tokens", "prompt_mask", "prompt_length")}
  (loss, metrics), grads = fast_jit(task.loss_and_grad)(params, batch, jax.random.key(1))
  assert np.isfinite(loss) and 0 <= metrics["coordinate_accuracy"] <= 1
  assert np.isfinite(np.asarray(jax.tree.leaves(grads)[0])).all()
  # bin_sigma: the 4 box targets get Gaussian targets over the bins, the EOS its one-hot.
  soft = GroundingTask(tiny_config("eval.num_examples=8", "bin_sigma=0.8", head="tokens"))
  soft_loss, _ = fast_jit(soft.loss_fn)(params, batch, None)
  logits = np.asarray(task.model.apply({"params": params}, batch["image"], batch["tokens"]),
                      np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  nll, count = 0.0, 0
  for r in rows:
    start = data["prompt_length"][r]
    for j in range(start, start + 5):   # x0 y0 x1 y1, then EOS
      target, given = data["tokens"][r, j], log_p[r, j - 1]
      if target >= v:
        q = np.exp(-(np.arange(bins) - (target - v)) ** 2 / (2 * 0.8 ** 2))
        nll -= (q / q.sum() * given[v:]).sum()
      else:
        nll -= given[target]
      count += 1
  assert float(soft_loss) == pytest.approx(nll / count, rel=1e-5)
  boxes = task.predict(params, _mesh())
  bins_used = boxes * bins - 0.5  # bin centres only
  np.testing.assert_allclose(bins_used, np.round(bins_used), atol=1e-4)
  assert boxes.shape == (8, 4) and (boxes > 0).all() and (boxes < 1).all()


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match=r"model.name must be one of \['captioner', "
                     r"'regression_grounder', 'unified_decoder'\]"):
    GroundingTask(tiny_config("model.name=vqa_classifier"))
  with pytest.raises(ValueError, match="num_bins must be >= 2, got 1"):
    GroundingTask(tiny_config("num_bins=1", head="tokens"))
  with pytest.raises(ValueError, match="eval.num_examples must be positive"):
    GroundingTask(tiny_config("eval.num_examples=0"))
  task = GroundingTask(tiny_config())
  batch = {"image": np.zeros((2, 16, 16, 3), np.float32), "box": np.zeros((2, 2), np.float32),
           "expression": np.zeros((2, 12), np.int32)}
  with pytest.raises(ValueError, match=r"box has shape \(2, 2\), expected \[batch=2, 4\]"):
    task.check_batch(batch, 0)
  loader = task._loader(task._source("test", 4))
  with pytest.raises(ValueError, match=r"referring_box must be float \[4\]"):
    loader.encode("the red circle", [0.5, 0.5, 0.2, 0.9], 3)
  with pytest.raises(ValueError, match="exceeds data.context_length=12"):
    loader.encode("the small red circle " * 3, [0.1, 0.1, 0.2, 0.2], 3)
