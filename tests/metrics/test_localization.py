"""cIoU / AUC against loop transcriptions of the LVS and EZ-VSL evaluation code, and masks
against hand-drawn ones."""
import jax
import numpy as np
import pytest
import sklearn.metrics

from mmjax import metrics


def _normalize_img(value):
  """LVS/EZ-VSL utils.normalize_img: min-max to [0, 1], untouched when constant."""
  vmin, vmax = value.min(), value.max()
  if not (vmax - vmin) == 0:
    value = (value - vmin) / (vmax - vmin)
  return value


def _cal_ciou(infer_map, gt_map):
  """utils.Evaluator.cal_CIOU after thresholding, one pixel at a time."""
  height, width = gt_map.shape
  intersection = gt_sum = outside = 0.0
  for r in range(height):
    for c in range(width):
      intersection += infer_map[r, c] * gt_map[r, c]
      gt_sum += gt_map[r, c]
      outside += infer_map[r, c] * (gt_map[r, c] == 0)
  return intersection / (gt_sum + outside)


def lvs_ciou(heatmap, gt_map):
  """LVS test.py: the map is normalised as -heatmap, flipped, cut at the sorted[H*W/2] value."""
  height, width = heatmap.shape
  pred = 1 - _normalize_img(-np.array(heatmap, np.float64))
  threshold = sorted(pred.flatten())[int(height * width / 2)]
  for r in range(height):
    for c in range(width):
      if pred[r, c] > threshold:
        pred[r, c] = 1
  for r in range(height):
    for c in range(width):
      if pred[r, c] < 1:
        pred[r, c] = 0
  infer_map = np.zeros((height, width))
  for r in range(height):
    for c in range(width):
      if pred[r, c] >= 0.5:  # cal_CIOU(pred, gt_map, 0.5)
        infer_map[r, c] = 1
  return _cal_ciou(infer_map, np.asarray(gt_map, np.float64))


def ezvsl_ciou(heatmap, gt_map):
  """EZ-VSL test.py: normalised map, threshold sorted[H*W*0.5], cal_CIOU keeps infer >= thr."""
  height, width = heatmap.shape
  pred = _normalize_img(np.array(heatmap, np.float64))
  threshold = sorted(pred.flatten())[int(height * width * 0.5)]
  infer_map = np.zeros((height, width))
  for r in range(height):
    for c in range(width):
      if pred[r, c] >= threshold:
        infer_map[r, c] = 1
  return _cal_ciou(infer_map, np.asarray(gt_map, np.float64))


def lvs_summary(iou):
  """LVS test.py / EZ-VSL Evaluator: success rate at 0.05 * i, sklearn auc over 21 points."""
  results = []
  for i in range(21):
    results.append(np.sum(np.array(iou) >= 0.05 * i) / len(iou))
  x = [0.05 * i for i in range(21)]
  return {"ciou@0.5": np.sum(np.array(iou) >= 0.5) / len(iou),
          "auc": sklearn.metrics.auc(x, results), "mean_ciou": np.mean(np.array(iou))}


def _random_masks(rng, n, height, width):
  masks = np.zeros((n, height, width), bool)
  for i in range(n):
    r0, c0 = rng.integers(0, height - 1), rng.integers(0, width - 1)
    masks[i, r0:rng.integers(r0 + 1, height + 1), c0:rng.integers(c0 + 1, width + 1)] = True
  return masks


def _check_against_references(heatmaps, gt):
  got_lvs = np.asarray(metrics.localization_ciou(heatmaps, gt))
  got_ez = np.asarray(metrics.localization_ciou(heatmaps, gt, inclusive=True))
  want_lvs = [lvs_ciou(h, g) for h, g in zip(heatmaps, gt)]
  want_ez = [ezvsl_ciou(h, g) for h, g in zip(heatmaps, gt)]
  np.testing.assert_allclose(got_lvs, want_lvs, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got_ez, want_ez, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(6, 8), (5, 7)])  # even and odd H*W
def test_ciou_matches_references_on_continuous_maps(shape):
  rng = np.random.default_rng(0)
  heatmaps = rng.normal(size=(8,) + shape).astype(np.float32)
  _check_against_references(heatmaps, _random_masks(rng, 8, *shape))


def test_ciou_matches_references_with_ties_at_the_median():
  rng = np.random.default_rng(1)
  heatmaps = rng.integers(0, 4, (12, 6, 8)).astype(np.float32)
  # At least half the pixels at the maximum: LVS keeps them though none is above the threshold.
  heatmaps[-3:] = (rng.random((3, 6, 8)) < 0.7).astype(np.float32)
  heatmaps[-1, 0, 0] = -1.0
  assert np.all(np.mean(heatmaps[-3:] == 1, axis=(1, 2)) >= 0.5)
  masks = _random_masks(rng, 12, 6, 8)
  _check_against_references(heatmaps, masks)
  positive = np.asarray(metrics.binarize_at_median(heatmaps[-3:]))
  np.testing.assert_array_equal(positive, heatmaps[-3:] == 1)


def test_ciou_by_hand():
  heatmap = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
  gt = np.zeros((1, 4, 4), bool)
  gt[0, 2:] = True  # values 8..15
  # t = sorted[8] = 8; LVS keeps 9..15 (7 pixels, all in G): 7 / 8. Keeping 8 too: 8 / 8.
  np.testing.assert_allclose(metrics.localization_ciou(heatmap, gt), [7 / 8], rtol=1e-6)
  np.testing.assert_allclose(metrics.localization_ciou(heatmap, gt, inclusive=True), [1.0])
  gt_left = np.zeros((1, 4, 4), bool)
  gt_left[0, :, :2] = True  # values 0,1,4,5,8,9,12,13
  # P = 9..15: P*G = {9, 12, 13} = 3; |G| = 8; P outside G = {10, 11, 14, 15} = 4.
  np.testing.assert_allclose(metrics.localization_ciou(heatmap, gt_left), [3 / 12], rtol=1e-6)


def test_constant_map_is_all_positive():
  gt = np.zeros((3, 4, 6), bool)
  gt[:, 1:3, 1:4] = True  # 6 of 24 pixels
  heatmaps = np.stack([np.zeros((4, 6)), np.full((4, 6), 2.0), np.full((4, 6), -0.7)]
                      ).astype(np.float32)
  for inclusive in (False, True):
    got = np.asarray(metrics.localization_ciou(heatmaps, gt, inclusive=inclusive))
    np.testing.assert_allclose(got, [6 / 24] * 3, rtol=1e-6)
  # LVS's code agrees for a non-negative constant (a negative one is empty there).
  for h in heatmaps[:2]:
    np.testing.assert_allclose(lvs_ciou(h, gt[0]), 6 / 24)
    np.testing.assert_allclose(ezvsl_ciou(h, gt[0]), 6 / 24)


def test_empty_ground_truth_scores_zero():
  rng = np.random.default_rng(2)
  heatmaps = rng.normal(size=(2, 5, 5)).astype(np.float32)
  gt = np.zeros((2, 5, 5), bool)
  got = np.asarray(metrics.localization_ciou(heatmaps, gt))
  np.testing.assert_array_equal(got, [0.0, 0.0])
  assert [lvs_ciou(h, g) for h, g in zip(heatmaps, gt)] == [0.0, 0.0]


def test_soft_flickr_ground_truth():
  rng = np.random.default_rng(3)
  heatmaps = rng.normal(size=(6, 6, 8)).astype(np.float32)
  # Flickr-SoundNet: min(#annotator boxes covering / 2, 1).
  counts = sum(_random_masks(rng, 6, 6, 8).astype(np.float32) for _ in range(3))
  gt = np.minimum(counts / 2, 1)
  assert np.any(gt == 0.5)
  _check_against_references(heatmaps, gt)


def test_ciou_jit_and_non_finite():
  rng = np.random.default_rng(4)
  heatmaps = rng.integers(0, 3, (4, 6, 6)).astype(np.float32)
  gt = _random_masks(rng, 4, 6, 6)
  eager = np.asarray(metrics.localization_ciou(heatmaps, gt))
  np.testing.assert_array_equal(np.asarray(jax.jit(metrics.localization_ciou)(heatmaps, gt)),
                                eager)
  heatmaps[1, 2, 3] = np.nan
  cious = np.asarray(metrics.localization_ciou(heatmaps, gt))
  assert np.isnan(cious[1]) and not np.isnan(cious[[0, 2, 3]]).any()
  with pytest.raises(ValueError, match=r"NaN at samples \[1\]"):
    metrics.localization_summary(cious)


def test_summary_matches_lvs_and_sklearn():
  rng = np.random.default_rng(5)
  # Values exactly on the thresholds test the >= (0.15, 0.35 are not 0.05 * 3, 0.05 * 7).
  cious = np.concatenate([rng.random(40), [0.0, 0.15, 0.3, 0.35, 0.5, 0.05 * 7, 1.0]])
  got = metrics.localization_summary(cious)
  want = lvs_summary(cious)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
  thresholds = np.array([0.0, 0.2, 0.5, 0.9])
  success = [np.mean(cious >= s) for s in thresholds]
  np.testing.assert_allclose(metrics.localization_summary(cious, thresholds)["auc"],
                             sklearn.metrics.auc(thresholds, success), rtol=1e-12)


def test_summary_by_hand():
  assert metrics.localization_summary([1.0])["auc"] == pytest.approx(1.0)
  # Success 1 at s = 0, then 0: one trapezoid of width 0.05.
  assert metrics.localization_summary([0.0])["auc"] == pytest.approx(0.025)
  got = metrics.localization_summary([0.5, 0.49, 1.0, 0.2])
  assert got["ciou@0.5"] == 0.5 and got["mean_ciou"] == pytest.approx(2.19 / 4)


def test_pointing_accuracy():
  heatmaps = np.zeros((5, 3, 4), np.float32)
  masks = np.zeros((5, 3, 4), bool)
  heatmaps[0, 1, 2] = 5
  masks[0, 1, 2] = True  # hit
  heatmaps[1, 0, 0] = 5
  masks[1, 2, 3] = True  # miss
  heatmaps[2:, 0, 1] = heatmaps[2:, 2, 2] = 5  # tied maxima: the first, (0, 1), counts
  masks[2, 0, 1] = True  # hit
  masks[3, 2, 2] = True  # miss
  masks[4, 0, :2] = True  # hit
  hits = []
  for h, m in zip(heatmaps, masks):
    r, c = np.unravel_index(np.argmax(h), h.shape)
    hits.append(bool(m[r, c]))
  assert hits == [True, False, True, False, True]
  assert float(metrics.pointing_accuracy(heatmaps, masks)) == pytest.approx(3 / 5)
  assert float(jax.jit(metrics.pointing_accuracy)(heatmaps, masks)) == pytest.approx(3 / 5)


def _draw(art):
  return np.array([[ch == "#" for ch in row] for row in art.split()])


def test_boxes_to_masks_hand_drawn():
  boxes = np.array([
      [[0.25, 0.0, 0.5, 0.5],  # columns 2-3, rows 0-2 (edges on pixel boundaries)
       [5.5 / 8, 4.5 / 6, 1.0, 1.0],  # left/top edges on pixel centres: included
       [0.0, 0.0, 1.0, 1.0]],  # padding
      [[0.0, 0.0, 2.5 / 8, 1 / 6],  # right edge on a centre: column 2 excluded
       [0.125, 0.5, 0.375, 1.0],  # overlaps nothing; columns 1-2, rows 3-5
       [0.3, 0.3, 0.3, 0.6]]])  # zero width: no pixel
  valid = np.array([[True, True, False], [True, True, True]])
  want = np.stack([_draw("""
      ..##....
      ..##....
      ..##....
      ........
      .....###
      .....###
  """), _draw("""
      ##......
      ........
      ........
      .##.....
      .##.....
      .##.....
  """)])
  got = metrics.boxes_to_masks(boxes, valid, 6, 8)
  np.testing.assert_array_equal(np.asarray(got), want)
  jitted = jax.jit(metrics.boxes_to_masks, static_argnames=("height", "width"))
  np.testing.assert_array_equal(np.asarray(jitted(boxes, valid, height=6, width=8)), want)


def test_centre_box_baseline():
  want = np.zeros((10, 10), np.float32)
  want[3:7, 3:7] = 1  # fraction 0.4: edges at pixel boundaries 3 and 7
  np.testing.assert_array_equal(np.asarray(metrics.centre_box_baseline(10, 10, 0.4)), want)
  big = np.asarray(metrics.centre_box_baseline(10, 10, 0.8))  # 64 of 100 pixels
  assert big.sum() == 64 and big[1:9, 1:9].all()
  # Under LVS's rule both binarise to their box, whether it holds under or over half the map.
  for box in (want, big):
    np.testing.assert_allclose(lvs_ciou(box, box > 0), 1.0)
    np.testing.assert_allclose(metrics.localization_ciou(box[None], box[None] > 0), [1.0])


def test_bad_input_raises():
  maps = np.zeros((2, 4, 4), np.float32)
  with pytest.raises(ValueError, match="gt_masks"):
    metrics.localization_ciou(maps, np.zeros((2, 4, 5), bool))
  with pytest.raises(ValueError, match=r"weights in \[0, 1\]"):
    metrics.localization_ciou(maps, np.full((2, 4, 4), 2.0))
  with pytest.raises(ValueError, match="non-empty"):
    metrics.localization_summary([])
  with pytest.raises(ValueError, match="increasing"):
    metrics.localization_summary([0.5], thresholds=[0.5, 0.2])
  with pytest.raises(ValueError, match="valid boxes"):
    metrics.boxes_to_masks(np.array([[[0.5, 0.0, 0.2, 1.0]]]), np.ones((1, 1), bool), 4, 4)
  with pytest.raises(ValueError, match=r"valid \[N, K\]"):
    metrics.boxes_to_masks(np.zeros((1, 2, 4)), np.ones((1, 3), bool), 4, 4)
  with pytest.raises(ValueError, match="fraction"):
    metrics.centre_box_baseline(4, 4, 0.0)
  with pytest.raises(ValueError, match="covers no pixel"):
    metrics.centre_box_baseline(10, 10, 0.05)


def test_best_ciou_of_distinct_maps_is_the_maximum_over_every_ranking():
  import itertools
  import jax.numpy as jnp
  from mmjax.metrics import best_ciou_of_distinct_maps, localization_ciou
  height, width = 2, 3
  masks = np.array([[int(b) for b in f"{code:06b}"] for code in range(64)], bool)
  masks = masks.reshape(64, height, width)
  rankings = np.array(list(itertools.permutations(range(height * width))), np.float32)
  maps = rankings.reshape(-1, height, width)
  best = np.zeros(64)
  for k, mask in enumerate(masks):
    cious = localization_ciou(jnp.asarray(maps), jnp.asarray(np.broadcast_to(mask, maps.shape)))
    best[k] = np.max(np.asarray(cious))
  np.testing.assert_allclose(best_ciou_of_distinct_maps(jnp.asarray(masks)), best, atol=1e-6)
