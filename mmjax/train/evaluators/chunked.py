"""A predict_fn over host arrays in fixed-size, batch-sharded chunks (via `map_in_chunks`),
and the input checks the evaluators share."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmjax.train import sharding


def predict_in_chunks(predict_fn: Callable[..., Any], params: Any, arrays: tuple[np.ndarray, ...],
                      mesh: Mesh, batch_size: int, *, host: bool = True) -> Any:
  """`predict_fn(params, *chunk)` over host `arrays` (all `[N, ...]`), outputs joined over N.

  Every chunk is zero-padded to one size (one compilation); the padding rows' outputs are
  dropped before joining, so they never reach a metric.

  Args:
    predict_fn: jitted `(params, *arrays [B, ...]) -> outputs` (a pytree of `[B, ...]`).
    arrays: host arrays `[N, ...]` that every process holds in full.
    batch_size: rows per call (rounded up to the mesh's data-parallel size).
    host: numpy outputs on every process; False keeps them on device.
  Returns:
    the outputs' pytree with leaves `[N, ...]`.
  """
  if not len(arrays[0]):
    raise ValueError("predict_in_chunks needs at least one row, got arrays of length 0")
  chunks = sharding.map_in_chunks(functools.partial(predict_fn, params), arrays, mesh,
                                  batch_size, host=host)
  concatenate = np.concatenate if host else jnp.concatenate
  kept = [jax.tree.map(lambda leaf, count=count: leaf[:count], out) for count, out in chunks]
  return jax.tree.map(lambda *leaves: concatenate(leaves), *kept)


def check_batch_size(batch_size: int) -> int:
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1 (rows per predict_fn call), got {batch_size}")
  return int(batch_size)


def check_rows(arrays: Mapping[str, Any], rows: int | None = None) -> int:
  """Number of rows N shared by `arrays` (name -> `[N, ...]`); raises ValueError otherwise."""
  lengths = {name: len(np.asarray(array)) if np.ndim(array) else None
             for name, array in arrays.items()}
  if None in lengths.values() or len(set(lengths.values()) | ({rows} - {None})) != 1:
    shapes = {name: np.shape(array) for name, array in arrays.items()}
    expected = f"{rows}" if rows is not None else "the same N"
    raise ValueError(f"arrays must all be [N, ...] with N = {expected}, got shapes {shapes}")
  count = next(iter(lengths.values()))
  if count == 0:
    raise ValueError(f"evaluation data is empty: {sorted(arrays)} have 0 rows")
  return count
