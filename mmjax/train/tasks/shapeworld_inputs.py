"""What every ShapeWorld task reads the same way: its data source and the checks of a host batch.

The checks raise ValueError naming the step, the field, what it was and what was expected.
"""
from __future__ import annotations

from collections.abc import Mapping

import ml_collections
import numpy as np

from mmjax.data import shapeworld


def shapeworld_source(data: ml_collections.ConfigDict, split: str, length: int,
                      num_objects=None) -> shapeworld.ShapeWorld:
  """The `split` ShapeWorld source of `length` examples from the task's `config.data`
  (name, seed, image_size, num_objects; `num_objects` overrides the last)."""
  if data.name != "shapeworld":
    raise ValueError(f"data.name must be 'shapeworld', got {data.name!r}")
  return shapeworld.ShapeWorld(split=split, length=length, seed=data.seed,
                               image_size=data.image_size,
                               num_objects=tuple(num_objects or data.num_objects))


def _field(batch: Mapping[str, np.ndarray], key: str, step: int) -> np.ndarray:
  if key not in batch:
    raise ValueError(f"batch at step {step} has no {key!r}; it has keys {sorted(batch)}")
  return batch[key]


def check_images(batch: Mapping[str, np.ndarray], step: int, image_size: int,
                 key: str = "image") -> np.ndarray:
  """`batch[key]` must be float `[B, image_size, image_size, 3]` (values in [0, 1]); returns it."""
  image = _field(batch, key, step)
  if image.ndim != 4 or image.shape[1:] != (image_size, image_size, 3):
    raise ValueError(f"batch at step {step}: {key} has shape {image.shape}, expected "
                     f"[batch, {image_size}, {image_size}, 3] (data.image_size={image_size})")
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"batch at step {step}: {key} has dtype {image.dtype}, expected float in "
                     "[0, 1]")
  return image


def check_tokens(batch: Mapping[str, np.ndarray], step: int, key: str, context_length: int,
                 batch_size: int, what: str = "token ids, padded") -> np.ndarray:
  """`batch[key]` must be integer `[batch_size, context_length]`; returns it."""
  tokens = _field(batch, key, step)
  if tokens.ndim != 2 or tokens.shape != (batch_size, context_length):
    raise ValueError(f"batch at step {step}: {key} has shape {tokens.shape}, expected "
                     f"[{batch_size}, {context_length}] ({what}; "
                     f"data.context_length={context_length})")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"batch at step {step}: {key} has dtype {tokens.dtype}, expected int32 ids")
  return tokens
