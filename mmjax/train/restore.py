"""Loading a trained run's params back from its workdir (evaluation, sampling, warm start).

Its own module so that the trainer and warm start (which the trainer calls) both import it
without importing each other.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

from mmjax.train import sharding
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.optim import make_optimizer
from mmjax.train.state import build_state
from mmjax.train.tasks import get_task_class


@dataclasses.dataclass
class RestoredRun:
  """A trained run loaded back from its workdir: the task, its mesh, the params and the step."""
  task: Any
  mesh: jax.sharding.Mesh
  params: Any
  step: int


def restore_params(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                   step: int | None = None, devices=None) -> RestoredRun:
  """Restores the params of checkpoint `step` (default: the latest) of the run in `workdir`.

  Raises FileNotFoundError (creating nothing on disk) if `workdir` has no checkpoint.
  """
  workdir = pathlib.Path(workdir)
  directory = workdir / "checkpoints"
  if not directory.is_dir():  # Checkpointer would create it: check first.
    raise FileNotFoundError(f"no checkpoint in {directory} (no such directory); train first "
                            f"with `mmjax train --workdir {workdir}`")
  mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
  task = get_task_class(config.task)(config)
  task.set_mesh(mesh)
  tx, _ = make_optimizer(config.optim, config.total_steps)
  _, abstract_state, _ = build_state(task, tx, config, mesh)
  checkpointer = Checkpointer(directory, keep=config.keep_checkpoints)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}; train first with "
                              f"`mmjax train --workdir {workdir}`")
    state = checkpointer.restore_state(step, abstract_state)
  finally:
    checkpointer.close()
  return RestoredRun(task=task, mesh=mesh, params=state.params, step=int(step))
