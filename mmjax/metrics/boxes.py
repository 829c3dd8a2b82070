"""Intersection over union of axis-aligned boxes."""
import chex
import jax
import jax.numpy as jnp


def box_area(boxes: jax.Array) -> jax.Array:
  """Areas [...] of boxes [..., 4] given as (x_min, y_min, x_max, y_max)."""
  return jnp.clip(boxes[..., 2] - boxes[..., 0], 0) * jnp.clip(boxes[..., 3] - boxes[..., 1], 0)


def _intersection_and_union(boxes1: jax.Array, boxes2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Intersection and union areas `[...]` of boxes `[..., 4]` that broadcast together."""
  top_left = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
  bottom_right = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
  wh = jnp.clip(bottom_right - top_left, 0)
  intersection = wh[..., 0] * wh[..., 1]
  return intersection, box_area(boxes1) + box_area(boxes2) - intersection


def _check_matched(boxes1: jax.Array, boxes2: jax.Array) -> None:
  chex.assert_equal_shape([boxes1, boxes2])
  if boxes1.shape[-1] != 4:
    raise ValueError(f"boxes must end in a dimension of 4 (x_min, y_min, x_max, y_max), got "
                     f"{boxes1.shape}.")


def box_iou(boxes1: jax.Array, boxes2: jax.Array, eps: float = 0.0) -> jax.Array:
  """Pairwise IoU, as torchvision.ops.box_iou.

  Args:
    boxes1: [N, 4] boxes (x_min, y_min, x_max, y_max).
    boxes2: [M, 4] boxes, same format.
    eps: added to the union (0: two empty boxes give NaN, as torchvision).

  Returns:
    [N, M] IoU in [0, 1].
  """
  chex.assert_rank([boxes1, boxes2], 2)
  if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
    raise ValueError(f"boxes must have shape [N, 4] (x_min, y_min, x_max, y_max), got "
                     f"{boxes1.shape} and {boxes2.shape}.")
  intersection, union = _intersection_and_union(boxes1[:, None], boxes2[None, :])
  return intersection / (union + eps)


def matched_box_iou(boxes1: jax.Array, boxes2: jax.Array, eps: float = 0.0) -> jax.Array:
  """IoU of corresponding boxes [..., 4] and [..., 4] -> [...] (e.g. grounding accuracy)."""
  _check_matched(boxes1, boxes2)
  intersection, union = _intersection_and_union(boxes1, boxes2)
  return intersection / (union + eps)


def generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array, eps: float = 0.0) -> jax.Array:
  """Generalized IoU (Rezatofighi et al. 2019) of corresponding boxes: `[..., 4]` x `[..., 4]`.

  GIoU = IoU - (|C| - |A u B|) / |C|, with C the smallest box enclosing A and B; it lies in
  [-1, 1] and, unlike IoU, still has a gradient when the boxes do not overlap (DETR's box loss
  is 1 - GIoU). Matches the diagonal of torchvision.ops.generalized_box_iou.

  Args:
    boxes1: `[..., 4]` boxes (x_min, y_min, x_max, y_max).
    boxes2: `[..., 4]` boxes, same shape and format.
    eps: added to the union and to the enclosing area (0: degenerate boxes give NaN, as
      torchvision; a loss uses e.g. 1e-7).

  Returns:
    `[...]` GIoU in [-1, 1].
  """
  _check_matched(boxes1, boxes2)
  intersection, union = _intersection_and_union(boxes1, boxes2)
  enclosing_wh = jnp.clip(jnp.maximum(boxes1[..., 2:], boxes2[..., 2:])
                          - jnp.minimum(boxes1[..., :2], boxes2[..., :2]), 0)
  enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
  return intersection / (union + eps) - (enclosing - union) / (enclosing + eps)
