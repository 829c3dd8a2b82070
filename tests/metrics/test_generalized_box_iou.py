"""generalized_box_iou against a naive per-pair formula and a committed torchvision fixture."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.metrics.boxes import box_iou, generalized_box_iou, matched_box_iou

TORCHVISION_FIXTURE = (pathlib.Path(__file__).parents[1] / "fixtures" / "giou"
                       / "giou_torchvision.npz")


def _random_boxes(rng, shape):
  corners = rng.uniform(0, 1, shape + (2, 2))
  return np.concatenate([corners.min(-2), corners.max(-2)], -1).astype(np.float64)


def _naive_giou(a, b):
  """One pair, written from the paper's definition with Python floats."""
  ix0, iy0, ix1, iy1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
  inter = max(ix1 - ix0, 0.0) * max(iy1 - iy0, 0.0)
  area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
  union = area(a) + area(b) - inter
  enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
  return inter / union - (enclosing - union) / enclosing


def test_matches_naive_formula_on_batched_boxes():
  rng = np.random.default_rng(0)
  boxes1, boxes2 = _random_boxes(rng, (3, 5)), _random_boxes(rng, (3, 5))
  boxes2[0, 0] = [2.0, 2.0, 3.0, 3.0]  # disjoint: GIoU < 0
  boxes2[0, 1] = boxes1[0, 1]          # identical: GIoU = 1
  got = np.asarray(generalized_box_iou(jnp.asarray(boxes1, jnp.float32),
                                       jnp.asarray(boxes2, jnp.float32)))
  expected = np.array([[_naive_giou(a, b) for a, b in zip(r1, r2)]
                       for r1, r2 in zip(boxes1, boxes2)])
  assert got.shape == (3, 5)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert got[0, 0] < 0 and got[0, 1] == pytest.approx(1.0)
  assert np.all(got <= np.asarray(matched_box_iou(jnp.asarray(boxes1), jnp.asarray(boxes2))) + 1e-6)
  assert np.all((got >= -1) & (got <= 1))


def test_matches_torchvision_fixture():
  # torchvision.ops on fixed boxes, written by tests/fixtures/giou/make_fixture.py.
  fixture = np.load(TORCHVISION_FIXTURE)
  boxes1 = jnp.asarray(fixture["boxes1"], jnp.float32)[:, None]
  boxes2 = jnp.asarray(fixture["boxes2"], jnp.float32)[None, :]
  boxes1, boxes2 = jnp.broadcast_arrays(boxes1, boxes2)
  np.testing.assert_allclose(np.asarray(jax.jit(generalized_box_iou)(boxes1, boxes2)),
                             fixture["generalized_box_iou"], atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.jit(box_iou)(boxes1[:, 0], boxes2[0])),
                             fixture["box_iou"], atol=1e-6)


def test_gradient_is_finite_and_nonzero_for_disjoint_boxes():
  target = jnp.array([0.6, 0.6, 0.9, 0.9])
  grad = jax.grad(lambda box: generalized_box_iou(box, target, eps=1e-7))(
      jnp.array([0.1, 0.1, 0.3, 0.3]))
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_bad_shape_raises():
  with pytest.raises(ValueError, match="dimension of 4"):
    generalized_box_iou(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
