"""Visual grounding: IoU of one predicted box per referring expression with the true box."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmjax import metrics
from mmjax.train.evaluators.chunked import check_batch_size, check_rows, predict_in_chunks


class GroundingEvaluator:
  """Box accuracy at IoU thresholds and mean IoU.

  The model is seen through `predict_fn(params, batch) -> boxes float [B, 4]` (x0, y0, x1, y1;
  jittable), where `batch` maps the names of `inputs` to their rows `[B, ...]`.

  Metrics: `acc@<t>` (fraction with IoU >= t) for t in `thresholds`, and `mean_iou`.
  """

  def __init__(self, predict_fn: Callable, inputs: Mapping[str, np.ndarray], boxes: np.ndarray,
               batch_size: int, *, thresholds: Sequence[float] = (0.5, 0.75)):
    """
    Args:
      inputs: host arrays `[N, ...]` (e.g. image `[N, H, W, 3]`, expression `[N, L]`).
      boxes: host float `[N, 4]` true boxes (x0, y0, x1, y1).
      batch_size: rows per device call.
      thresholds: the IoU thresholds of `acc@t`.
    """
    if not inputs:
      raise ValueError("inputs must name at least one array for predict_fn's batch")
    boxes = np.asarray(boxes, np.float32)
    check_rows({**inputs, "boxes": boxes})
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise ValueError(f"boxes must be float [N, 4] (x0, y0, x1, y1), got {boxes.shape}")
    self.keys = tuple(inputs)
    self.inputs = tuple(inputs[key] for key in self.keys)
    self.boxes, self.thresholds = boxes, tuple(thresholds)
    self.batch_size = check_batch_size(batch_size)
    keys = self.keys
    self._predict = jax.jit(lambda params, *arrays: predict_fn(params, dict(zip(keys, arrays))))

  def predict(self, params: Any, mesh: Mesh) -> np.ndarray:
    """Predicted boxes float32 `[N, 4]` (host)."""
    boxes = predict_in_chunks(self._predict, params, self.inputs, mesh, self.batch_size)
    if boxes.shape != self.boxes.shape:
      raise ValueError(f"predict_fn must return boxes [B, 4]; got {boxes.shape} for "
                       f"{self.boxes.shape} examples")
    return boxes.astype(np.float32)

  def evaluate(self, params: Any, mesh: Mesh) -> dict[str, float]:
    iou = np.asarray(metrics.matched_box_iou(jnp.asarray(self.predict(params, mesh)),
                                             jnp.asarray(self.boxes)))
    results = {f"acc@{t}": float((iou >= t).mean()) for t in self.thresholds}
    results["mean_iou"] = float(iou.mean())
    return results
