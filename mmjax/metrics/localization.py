"""Sound-source localisation metrics: cIoU, its success-rate AUC, and pointing accuracy.

The definitions follow the evaluation code released with LVS (Chen et al. 2021, "Localizing
Visual Sounds the Hard Way", github.com/hche11/Localizing-Visual-Sounds-the-Hard-Way, test.py
and utils.py), which Flickr-SoundNet and VGG-SS numbers are reported with:

- Binarisation. With the H*W values of one map sorted ascending, the threshold is the element
  at index floor(H*W / 2) (`np.sort(pred.flatten())[int(H * W / 2)]`: the true median for odd
  H*W, the upper of the two middle values for even H*W, never their mean). LVS keeps the pixels
  strictly above it (`pred[pred > threshold] = 1; pred[pred < 1] = 0` on a map min-max
  normalised to [0, 1]); the second assignment also keeps the pixels that equal the map's
  maximum, which matters when at least half the pixels tie at the maximum. So, here:
      P = (x > t) | (x == max(x)),
  which never leaves P empty and makes a constant map all positive. (LVS's own code differs
  only on a constant map, where its result depends on the constant's sign.) Later code
  derived from it (EZ-VSL and its followers, `cal_CIOU(pred, gt, thr)` with `infer >= thr`)
  keeps ties: `inclusive=True` gives P = (x >= t).
- cIoU = sum(P * G) / (sum(G) + sum(P * [G == 0])). G may be a bool mask (VGG-SS: union of the
  boxes) or weights in [0, 1] (Flickr-SoundNet: min(#annotator boxes covering / 2, 1)).
- Summary: the success rate at threshold s is the share of samples with cIoU >= s; LVS reports
  it at s = 0.5 ("cIoU" in its tables, "ciou@0.5" here) and the trapezoidal area under it over
  s = 0, 0.05, ..., 1 (sklearn.metrics.auc over the 21 points).

Map-level functions are jit-safe jax; `localization_summary` is host numpy bookkeeping.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

_LVS_THRESHOLDS = np.arange(0, 1.0 + 1e-9, 0.05)  # equal to [0.05 * i for i in range(21)]


def _check_maps(heatmaps, gt_masks) -> None:
  if heatmaps.ndim != 3:
    raise ValueError(f"heatmaps must have shape [N, H, W], got {heatmaps.shape}.")
  if gt_masks.shape != heatmaps.shape:
    raise ValueError(f"gt_masks must have the heatmaps' shape [N, H, W]={heatmaps.shape}, got "
                     f"{gt_masks.shape}.")
  if not isinstance(gt_masks, jax.core.Tracer) and gt_masks.dtype != bool:
    values = np.asarray(gt_masks)
    if values.size and (values.min() < 0 or values.max() > 1):
      raise ValueError(f"gt_masks must be bool or weights in [0, 1], got range "
                       f"[{values.min()}, {values.max()}].")


def binarize_at_median(heatmaps: jax.Array, inclusive: bool = False) -> jax.Array:
  """The predicted masks P [N, H, W] bool of heatmaps [N, H, W] (module docstring rule).

  inclusive=False (LVS): P = (x > t) | (x == max(x)); inclusive=True (EZ-VSL): P = (x >= t);
  t = the element at index floor(H*W / 2) of the map's values sorted ascending.
  """
  n, height, width = heatmaps.shape
  flat = heatmaps.reshape(n, height * width)
  ordered = jnp.sort(flat, axis=1)
  threshold = ordered[:, (height * width) // 2, None]
  if inclusive:
    positive = flat >= threshold
  else:
    positive = (flat > threshold) | (flat == ordered[:, -1:])
  return positive.reshape(n, height, width)


def localization_ciou(heatmaps: jax.Array, gt_masks: jax.Array,
                      inclusive: bool = False) -> jax.Array:
  """Consensus IoU of each map, as LVS's evaluation (module docstring).

  Args:
    heatmaps: [N, H, W] localisation scores (higher = more likely the sound source), at the
      resolution of the ground truth (LVS: 224 x 224, resized before this call).
    gt_masks: [N, H, W] bool masks, or float weights in [0, 1].
    inclusive: keep the pixels equal to the threshold (EZ-VSL) instead of LVS's strict rule.

  Returns:
    [N] float32 cIoU in [0, 1]. A sample without ground truth (G == 0 everywhere; LVS test
    images always have a box) scores 0, since P is never empty. A map with a non-finite value
    scores NaN, which `localization_summary` rejects.
  """
  chex.assert_rank(heatmaps, 3)
  _check_maps(heatmaps, gt_masks)
  return _ciou(heatmaps, gt_masks, bool(inclusive))


@functools.partial(jax.jit, static_argnames=("inclusive",))
def _ciou(heatmaps, gt_masks, inclusive):
  positive = binarize_at_median(heatmaps, inclusive)
  weights = gt_masks.astype(jnp.float32)
  intersection = jnp.sum(positive * weights, axis=(1, 2))
  denominator = (jnp.sum(weights, axis=(1, 2))
                 + jnp.sum(positive & (weights == 0), axis=(1, 2)).astype(jnp.float32))
  ciou = jnp.where(denominator > 0, intersection / jnp.maximum(denominator, 1e-30), 0.0)
  finite = jnp.all(jnp.isfinite(heatmaps), axis=(1, 2))
  return jnp.where(finite, ciou, jnp.nan).astype(jnp.float32)


def best_ciou_of_distinct_maps(gt_masks: jax.Array) -> jax.Array:
  """The largest cIoU (LVS's strict rule) that any map with distinct values can reach on each
  bool mask `[N, H, W]`: `[N]` float32.

  Binarised at its median, such a map keeps exactly p = H*W - floor(H*W / 2) - 1 pixels, so
  with g = sum(G) the best it can do is P inside G or G inside P:
      g / p for g <= p,  p / g for g > p  (0 for an empty mask).
  So a continuous map scores cIoU >= 0.5 only on masks of at least p / 2 pixels (about a
  quarter of the frame): smaller sounding objects cannot count towards ciou@0.5.
  """
  chex.assert_rank(gt_masks, 3)
  _, height, width = gt_masks.shape
  kept = height * width - (height * width) // 2 - 1
  g = jnp.sum(gt_masks.astype(jnp.float32), axis=(1, 2))
  return jnp.where(g <= kept, g / kept, kept / jnp.maximum(g, 1.0)).astype(jnp.float32)


def localization_summary(cious, thresholds=_LVS_THRESHOLDS) -> dict[str, float]:
  """Dataset-level numbers from per-sample cIoU (host numpy).

  Args:
    cious: [N] per-sample cIoU (`localization_ciou`).
    thresholds: [S] increasing cIoU thresholds of the success curve (default LVS's 21,
      0:0.05:1).

  Returns:
    {"ciou@0.5": share of samples with cIoU >= 0.5, "auc": trapezoidal area under the success
    rate (share with cIoU >= s) over `thresholds` (= sklearn.metrics.auc), "mean_ciou"}.
  """
  cious = np.asarray(cious, np.float64)
  thresholds = np.asarray(thresholds, np.float64)
  if cious.ndim != 1 or cious.size == 0:
    raise ValueError(f"cious must be a non-empty [N] array, got shape {cious.shape}.")
  if np.isnan(cious).any():
    raise ValueError(f"cious has NaN at samples {np.flatnonzero(np.isnan(cious))[:10].tolist()} "
                     f"(non-finite heatmaps?); expected values in [0, 1].")
  if thresholds.ndim != 1 or thresholds.size < 2 or np.any(np.diff(thresholds) <= 0):
    raise ValueError(f"thresholds must be an increasing [S>=2] array, got {thresholds}.")
  success = np.mean(cious[None, :] >= thresholds[:, None], axis=1)
  auc = np.sum(np.diff(thresholds) * (success[1:] + success[:-1]) / 2)
  return {"ciou@0.5": float(np.mean(cious >= 0.5)), "auc": float(auc),
          "mean_ciou": float(np.mean(cious))}


def pointing_accuracy(heatmaps: jax.Array, gt_masks: jax.Array) -> jax.Array:
  """Share of maps whose maximum lies in the ground truth (the pointing game, no tolerance).

  Args:
    heatmaps: [N, H, W] scores; among tied maxima the first in row-major order counts.
    gt_masks: [N, H, W] bool masks or weights in [0, 1] (a pixel is inside when > 0).

  Returns:
    float32 scalar in [0, 1].
  """
  chex.assert_rank(heatmaps, 3)
  _check_maps(heatmaps, gt_masks)
  return _pointing_accuracy(heatmaps, gt_masks)


@jax.jit
def _pointing_accuracy(heatmaps, gt_masks):
  n = heatmaps.shape[0]
  peak = jnp.argmax(heatmaps.reshape(n, -1), axis=1)
  inside = gt_masks.reshape(n, -1)[jnp.arange(n), peak] > 0
  return jnp.mean(inside).astype(jnp.float32)


def boxes_to_masks(boxes: jax.Array, valid: jax.Array, height: int, width: int) -> jax.Array:
  """Union of the valid boxes of each image, rasterised by pixel centre.

  Pixel (r, c) is inside box (x0, y0, x1, y1) when x0 <= (c + 0.5) / W < x1 and
  y0 <= (r + 0.5) / H < y1: half-open, so a box whose edges lie on pixel boundaries covers
  exactly the pixels it spans and abutting boxes share none. (LVS truncates instead,
  `mask[int(H*y0):int(H*y1), int(W*x0):int(W*x1)]`, which can differ by one row or column
  per edge.)

  Args:
    boxes: [N, K, 4] (x0, y0, x1, y1) as fractions of the width and height, in [0, 1].
    valid: [N, K] bool, False for padding boxes.
    height, width: the mask size H, W.

  Returns:
    [N, H, W] bool.
  """
  chex.assert_rank([boxes, valid], [3, 2])
  if boxes.shape[-1] != 4 or valid.shape != boxes.shape[:2]:
    raise ValueError(f"boxes must be [N, K, 4] and valid [N, K], got {boxes.shape} and "
                     f"{valid.shape}.")
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be positive, got {height} x {width}.")
  if not isinstance(boxes, jax.core.Tracer) and not isinstance(valid, jax.core.Tracer):
    kept = np.asarray(boxes)[np.asarray(valid, bool)]  # [M, 4]
    bad = (((kept < 0) | (kept > 1)).any(axis=1) | (kept[:, 2] < kept[:, 0])
           | (kept[:, 3] < kept[:, 1]))
    if bad.any():
      raise ValueError("valid boxes must be (x0, y0, x1, y1) in [0, 1] with x0 <= x1 and "
                       f"y0 <= y1, got {kept[bad][:3].tolist()}.")
  return _boxes_to_masks(boxes, valid, int(height), int(width))


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _boxes_to_masks(boxes, valid, height, width):
  boxes = boxes.astype(jnp.float32)
  centre_x = jnp.arange(width, dtype=jnp.float32) + 0.5  # in pixel units
  centre_y = jnp.arange(height, dtype=jnp.float32) + 0.5
  x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
  in_x = (x0 * width <= centre_x) & (centre_x < x1 * width)  # [N, K, W]
  in_y = (y0 * height <= centre_y) & (centre_y < y1 * height)  # [N, K, H]
  in_box = in_y[..., :, None] & in_x[..., None, :] & valid.astype(bool)[..., None, None]
  return jnp.any(in_box, axis=1)


def centre_box_baseline(height: int, width: int, fraction: float = 0.5) -> jax.Array:
  """The audio-blind baseline map [H, W] float32: 1 on a centred box, 0 elsewhere.

  The box spans `fraction` of the width and of the height (area fraction**2), rasterised as
  `boxes_to_masks`. Under the LVS rule its binarised map is exactly that box for any
  fraction (t is 0 when the box holds under half the pixels, else t = the maximum); with
  `inclusive=True` a box under half the pixels binarises to the whole image. Broadcast it to
  [N, H, W] for `localization_ciou`.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
  low, high = (1 - fraction) / 2, (1 + fraction) / 2
  box = np.array([[[low, low, high, high]]], np.float32)
  mask = boxes_to_masks(box, np.ones((1, 1), bool), height, width)[0]
  if not bool(jnp.any(mask)):
    raise ValueError(f"a centred box of fraction {fraction} covers no pixel centre of a "
                     f"{height} x {width} map; use a larger fraction.")
  return mask.astype(jnp.float32)
