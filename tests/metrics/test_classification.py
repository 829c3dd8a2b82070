"""Top-K accuracy against scikit-learn and a naive stable-sort reference."""
import jax
import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score

from mmjax import metrics


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_without_ties(seed):
  rng = np.random.default_rng(seed)
  n, c = 200, int(rng.integers(3, 20))
  logits = rng.normal(size=(n, c)).astype(np.float32)
  labels = rng.integers(0, c, n)
  ks = (1, 2, 3)
  got = jax.jit(metrics.zero_shot_accuracy, static_argnames="ks")(logits, labels, ks=ks)
  assert set(got) == {"top1", "top2", "top3"}
  for k in ks:
    want = top_k_accuracy_score(labels, logits, k=k, labels=np.arange(c))
    np.testing.assert_allclose(float(got[f"top{k}"]), want, rtol=1e-6)


def test_ties_ordered_by_class_index():
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 3, (300, 6)).astype(np.float32)
  labels = rng.integers(0, 6, 300)
  for k in (1, 3):
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    want = np.mean(np.any(order == labels[:, None], axis=1))
    got = metrics.zero_shot_accuracy(logits, labels, ks=(k,))[f"top{k}"]
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_bad_input_raises():
  with pytest.raises(ValueError, match="labels must have shape"):
    metrics.zero_shot_accuracy(np.zeros((3, 4)), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="labels must lie"):
    metrics.zero_shot_accuracy(np.zeros((3, 4)), np.array([0, 1, 4]))
  with pytest.raises(ValueError, match="integer"):
    metrics.zero_shot_accuracy(np.zeros((3, 4)), np.zeros(3, np.float32))
