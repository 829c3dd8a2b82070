"""What a task gives the one trainer. The trainer knows nothing about any model."""
from __future__ import annotations

import abc
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

Batch = Mapping[str, jax.Array]


class Task(abc.ABC):
  """A training objective: model, loss, data and evaluation for `config`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.mesh: Mesh | None = None

  def set_mesh(self, mesh: Mesh) -> None:
    """The trainer's mesh, for losses that need explicit collectives (`shard_map`)."""
    self.mesh = mesh

  @property
  @abc.abstractmethod
  def model(self) -> nn.Module:
    """The Flax module being trained."""

  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> Any:
    """Parameters (boxed with logical axis names) from a PRNG key; traced under `eval_shape`."""

  @abc.abstractmethod
  def loss_fn(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Scalar loss and a dict of scalar metrics for one global batch."""

  def loss_and_grad(self, params: Any, batch: Batch, rng: jax.Array):
    """((loss, metrics), grads). Tasks override this for gradient caching and the like."""
    return jax.value_and_grad(self.loss_fn, has_aux=True)(params, batch, rng)

  @abc.abstractmethod
  def train_batches(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """A checkpointable Grain iterator over this host's slice of each global batch."""

  def check_batch(self, batch: Mapping[str, np.ndarray], step: int) -> None:
    """Raises ValueError if a host batch is malformed (shapes, dtypes, empty text)."""

  @abc.abstractmethod
  def evaluate(self, params: Any, mesh: Mesh) -> dict[str, float]:
    """Evaluation metrics (floats) on every process."""

  def write_artifacts(self, params: Any, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    """Plots and other end-of-run files; returns the paths written (process 0 only)."""
    return []
