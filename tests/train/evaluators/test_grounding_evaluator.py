"""GroundingEvaluator against IoUs computed exactly (fractions) one box pair at a time.

The predict_fn looks boxes up by example id; all coordinates are multiples of 1/16, so
float32 IoUs are exact and some sit exactly on the 0.5 and 0.75 thresholds (which count as
hits). 13 examples in chunks of 3 on 8 devices."""
from fractions import Fraction

import jax
import numpy as np
import pytest

from mmjax.train import sharding
from mmjax.train.evaluators import GroundingEvaluator

NUM_EXAMPLES = 13


def predict_boxes(params, batch):
  return params["boxes"][batch["example"]]


def _exact_iou(a, b):
  a, b = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
  w = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
  h = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(5)
  corners = np.sort(rng.integers(0, 17, (NUM_EXAMPLES, 2, 2)), axis=1)  # [N, (min, max), (x, y)]
  corners[:, 1] += corners[:, 0] == corners[:, 1]  # no empty box
  predicted = (np.concatenate([corners[:, 0], corners[:, 1]], 1) / 16).astype(np.float32)
  target = predicted + rng.integers(-2, 3, predicted.shape) / 16
  target = np.concatenate([np.minimum(target[:, :2], target[:, 2:] - 1 / 16), target[:, 2:]], 1)
  # Exactly on the thresholds: IoU 1/2 and 3/4 (and a perfect match).
  predicted[:3] = [[0, 0, 0.5, 1], [0, 0, 0.75, 1], [0.25, 0.25, 0.5, 0.5]]
  target[:3] = [[0, 0, 1, 1], [0, 0, 1, 1], [0.25, 0.25, 0.5, 0.5]]
  inputs = {"example": np.arange(NUM_EXAMPLES, dtype=np.int32),
            "image": np.zeros((NUM_EXAMPLES, 2, 2, 3), np.float32)}
  return inputs, {"boxes": predicted}, target.astype(np.float32)


@pytest.mark.parametrize("devices", [8, 1])
def test_metrics_equal_exact_ious(setup, devices):
  inputs, params, target = setup
  evaluator = GroundingEvaluator(predict_boxes, inputs, target, 3)
  mesh = sharding.make_mesh({"data": devices}, jax.devices()[:devices])
  got = evaluator.evaluate(params, mesh)
  ious = [_exact_iou(p, t) for p, t in zip(params["boxes"], target)]
  assert ious[:3] == [Fraction(1, 2), Fraction(3, 4), 1]
  want = {"acc@0.5": sum(i >= Fraction(1, 2) for i in ious) / NUM_EXAMPLES,
          "acc@0.75": sum(i >= Fraction(3, 4) for i in ious) / NUM_EXAMPLES,
          "mean_iou": float(sum(ious) / NUM_EXAMPLES)}
  assert got["acc@0.5"] == pytest.approx(want["acc@0.5"], rel=1e-12)
  assert got["acc@0.75"] == pytest.approx(want["acc@0.75"], rel=1e-12)
  assert got["mean_iou"] == pytest.approx(want["mean_iou"], rel=1e-6)
  assert set(got) == set(want) and 0 < want["acc@0.75"] < want["acc@0.5"] < 1


def test_other_thresholds_name_their_metrics(setup):
  inputs, params, target = setup
  evaluator = GroundingEvaluator(predict_boxes, inputs, target, 4, thresholds=(0.25,))
  got = evaluator.evaluate(params, sharding.make_mesh({"data": 8}))
  ious = [_exact_iou(p, t) for p, t in zip(params["boxes"], target)]
  assert set(got) == {"acc@0.25", "mean_iou"}
  assert got["acc@0.25"] == pytest.approx(sum(i >= Fraction(1, 4) for i in ious) / NUM_EXAMPLES)


def test_bad_input_raises_clear_errors(setup):
  inputs, params, target = setup
  with pytest.raises(ValueError, match=r"boxes must be float \[N, 4\]"):
    GroundingEvaluator(predict_boxes, inputs, target[:, :2], 3)
  with pytest.raises(ValueError, match=r"arrays must all be \[N, \.\.\.\]"):
    GroundingEvaluator(predict_boxes, inputs, target[:-1], 3)
  with pytest.raises(ValueError, match="inputs must name at least one array"):
    GroundingEvaluator(predict_boxes, {}, target, 3)
  evaluator = GroundingEvaluator(lambda p, b: predict_boxes(p, b)[:, :3], inputs, target, 3)
  with pytest.raises(ValueError, match=r"predict_fn must return boxes \[B, 4\]"):
    evaluator.evaluate(params, sharding.make_mesh({"data": 8}))
