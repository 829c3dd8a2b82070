"""mAP against scikit-learn; IoU against a per-pair loop."""
import warnings

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mmjax import metrics

N, C = 24, 5  # fixed shapes: one compile per average


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None)
@hypothesis.given(seed=st.integers(0, 2**32 - 1), levels=st.sampled_from([2, 4, 1000]),
                  average=st.sampled_from(["macro", "micro", "weighted", "samples", None]),
                  density=st.floats(0.0, 0.6))
def test_matches_sklearn_multilabel(seed, levels, average, density):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels, (N, C)).astype(np.float32) / levels  # ties when few levels
  labels = (rng.random((N, C)) < density).astype(np.int32)
  labels[:, 0] = 0  # an all-negative class
  labels[0, 1] = 1  # and at least one positive somewhere
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    want = average_precision_score(labels, scores, average=average)
  got = np.asarray(metrics.mean_average_precision(scores, labels, average=average))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_binary_and_integer_labels():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 40).astype(np.float32)
  labels = rng.integers(0, 2, 40)
  np.testing.assert_allclose(float(metrics.mean_average_precision(scores, labels)),
                             average_precision_score(labels, scores), rtol=1e-6)
  class_scores = rng.normal(size=(60, 4)).astype(np.float32)
  classes = np.arange(60) % 4
  np.testing.assert_allclose(float(metrics.mean_average_precision(class_scores, classes)),
                             average_precision_score(classes, class_scores), rtol=1e-6)
  with pytest.raises(ValueError, match="average"):
    metrics.mean_average_precision(scores, labels, average="bogus")


def test_box_iou_against_loop():
  rng = np.random.default_rng(0)
  def boxes(n):
    xy = rng.uniform(0, 10, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0, 5, (n, 2))], axis=1).astype(np.float32)
  b1, b2 = boxes(7), boxes(9)
  want = np.zeros((7, 9))
  for i in range(7):
    for j in range(9):
      w = max(0, min(b1[i, 2], b2[j, 2]) - max(b1[i, 0], b2[j, 0]))
      h = max(0, min(b1[i, 3], b2[j, 3]) - max(b1[i, 1], b2[j, 1]))
      area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
      want[i, j] = w * h / (area(b1[i]) + area(b2[j]) - w * h)
  got = jax.jit(metrics.box_iou)(b1, b2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics.matched_box_iou(b1[:7], b2[:7]), np.diag(want[:, :7]),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.diag(metrics.box_iou(b1, b1)), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    metrics.box_iou(np.zeros((2, 3)), np.zeros((2, 4)))
