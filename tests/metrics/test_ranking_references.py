"""binary_average_precision, retrieval_ranks and topk_correct against naive numpy loops.

Each reference is written from the definition, one query / one threshold at a time, with the
tie rules the functions document; scores come from a few levels so that ties are frequent.
"""
import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mmjax import metrics


def naive_average_precision(scores, labels):
  """sum_k (R_k - R_{k-1}) P_k over the distinct thresholds k, highest first."""
  n_positives = labels.sum()
  if n_positives == 0:
    return 0.0
  ap, previous_recall = 0.0, 0.0
  for threshold in sorted(set(scores.tolist()), reverse=True):
    selected = scores >= threshold
    true_positives = labels[selected].sum()
    recall = true_positives / n_positives
    ap += (recall - previous_recall) * true_positives / selected.sum()
    previous_recall = recall
  return ap


average_precision = jax.jit(metrics.binary_average_precision)
topk_correct = jax.jit(metrics.topk_correct, static_argnums=2)


@pytest.mark.parametrize("levels", [3, 10, 10_000])
def test_binary_average_precision_matches_threshold_loop(levels):
  rng = np.random.default_rng(levels)
  for _ in range(20):  # one shape: one compile
    scores = (rng.integers(0, levels, 30) / levels).astype(np.float32)
    labels = (rng.random(30) < 0.3).astype(np.int32)
    labels[rng.integers(30)] = 1
    want = naive_average_precision(scores, labels)
    np.testing.assert_allclose(float(average_precision(scores, labels)), want, rtol=1e-6)
    np.testing.assert_allclose(want, average_precision_score(labels, scores), rtol=1e-12)


def test_binary_average_precision_known_values():
  # Ranking + - + -: AP = (1/1 + 2/3) / 2.
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  np.testing.assert_allclose(float(average_precision(scores, np.array([1, 0, 1, 0]))), 5 / 6,
                             rtol=1e-6)
  # A positive tied with a negative at the top takes the tied group's precision 1/2.
  tied = np.array([0.5, 0.5, 0.1, 0.0], np.float32)
  np.testing.assert_allclose(float(average_precision(tied, np.array([1, 0, 0, 0]))), 0.5,
                             rtol=1e-6)
  assert float(average_precision(scores, np.zeros(4, np.int32))) == 0.0


def naive_ranks(similarity, text_to_image):
  """Stable descending sort of every row / column; position of the (best) ground truth."""
  n_images, n_texts = similarity.shape
  i2t = np.full(n_images, n_texts)
  for i in range(n_images):
    order = list(np.argsort(-similarity[i], kind="stable"))
    captions = [j for j in range(n_texts) if text_to_image[j] == i]
    if captions:
      i2t[i] = min(order.index(j) for j in captions)
  t2i = np.array([list(np.argsort(-similarity[:, j], kind="stable")).index(text_to_image[j])
                  for j in range(n_texts)])
  return i2t, t2i


@pytest.mark.parametrize("block_size", [None, 3])
def test_retrieval_ranks_match_stable_sort_positions(block_size):
  rng = np.random.default_rng(5)
  for _ in range(10):
    text_to_image = rng.integers(0, 7, 15)  # some images have no caption
    similarity = rng.integers(-2, 3, (7, 15)).astype(np.float32)
    want_i2t, want_t2i = naive_ranks(similarity, text_to_image)
    i2t, t2i = metrics.retrieval_ranks(similarity, text_to_image, block_size=block_size)
    np.testing.assert_array_equal(i2t, want_i2t)
    np.testing.assert_array_equal(t2i, want_t2i)


def test_retrieval_ranks_known_values():
  similarity = np.array([[0.9, 0.1, 0.5],
                         [0.9, 0.8, 0.2]], np.float32)
  i2t, t2i = metrics.retrieval_ranks(similarity, np.array([1, 1, 0]))
  # Image 0's caption (text 2) is beaten by text 0; image 1's best caption (text 0) is first.
  np.testing.assert_array_equal(i2t, [1, 0])
  # Text 0: its image 1 ties with image 0, which comes first. Text 1: image 1 wins. Text 2:
  # image 0 wins.
  np.testing.assert_array_equal(t2i, [1, 0, 0])


def test_topk_correct_matches_stable_sort_loop():
  rng = np.random.default_rng(2)
  logits = rng.integers(0, 4, (200, 7)).astype(np.float32)  # many ties
  labels = rng.integers(0, 7, 200)
  for k in range(1, 8):
    want = [label in np.argsort(-row, kind="stable")[:k] for row, label in zip(logits, labels)]
    np.testing.assert_array_equal(topk_correct(logits, labels, k), want, err_msg=f"k={k}")


def test_topk_correct_known_values():
  logits = np.array([[0.1, 0.7, 0.2],
                     [0.5, 0.5, 0.0]], np.float32)
  # Row 0 ranks 1, 2, 0; row 1 ranks 0 then 1 (tie, lower index first), then 2.
  np.testing.assert_array_equal(topk_correct(logits, np.array([2, 1]), 1), [0, 0])
  np.testing.assert_array_equal(topk_correct(logits, np.array([2, 1]), 2), [1, 1])
  np.testing.assert_array_equal(topk_correct(logits, np.array([0, 0]), 2), [0, 1])
