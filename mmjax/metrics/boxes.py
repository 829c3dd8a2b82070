"""Intersection over union of axis-aligned boxes."""
import chex
import jax
import jax.numpy as jnp


def box_area(boxes: jax.Array) -> jax.Array:
  """Areas [...] of boxes [..., 4] given as (x_min, y_min, x_max, y_max)."""
  return jnp.clip(boxes[..., 2] - boxes[..., 0], 0) * jnp.clip(boxes[..., 3] - boxes[..., 1], 0)


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
  top_left = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  bottom_right = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  wh = jnp.clip(bottom_right - top_left, 0)
  intersection = wh[..., 0] * wh[..., 1]
  union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
  return intersection / (union + eps)


def matched_box_iou(boxes1: jax.Array, boxes2: jax.Array, eps: float = 0.0) -> jax.Array:
  """IoU of corresponding boxes [..., 4] and [..., 4] -> [...] (e.g. grounding accuracy)."""
  chex.assert_equal_shape([boxes1, boxes2])
  if boxes1.shape[-1] != 4:
    raise ValueError(f"boxes must end in a dimension of 4, got {boxes1.shape}.")
  top_left = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
  bottom_right = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
  wh = jnp.clip(bottom_right - top_left, 0)
  intersection = wh[..., 0] * wh[..., 1]
  return intersection / (box_area(boxes1) + box_area(boxes2) - intersection + eps)
