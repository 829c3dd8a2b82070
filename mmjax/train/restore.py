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

from mmjax.errors import NoCheckpointError
from mmjax.train import sharding, workdir as workdir_lib
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
                   step: int | None = None, devices=None, read_only: bool = False) -> RestoredRun:
  """Restores the params of checkpoint `step` (default: the newest that restores) of the run
  in `workdir`.

  A newer checkpoint that does not restore is reported and skipped; it is renamed aside to
  `<step>.corrupt` unless a live `mmjax train` holds the workdir (that run's files are left
  alone) or `read_only` (nothing in the workdir is renamed or written). Raises
  NoCheckpointError (creating nothing on disk) if no checkpoint restores, and
  CheckpointMismatchError if the checkpoints belong to another model than `config`'s.
  """
  workdir = pathlib.Path(workdir)
  directory = workdir / "checkpoints"
  if not directory.is_dir():  # Checkpointer would create it: check first.
    raise NoCheckpointError(f"no checkpoint in {directory} (no such directory); train first "
                            f"with `mmjax train --workdir {workdir}`")
  mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
  task = get_task_class(config.task)(config)
  task.set_mesh(mesh)
  tx, _ = make_optimizer(config.optim, config.total_steps)
  _, abstract_state, _ = build_state(task, tx, config, mesh)
  checkpointer = Checkpointer(directory, keep=config.keep_checkpoints, writer=False)
  try:
    had_any = bool(checkpointer.steps())
    found = checkpointer.restore_latest(abstract_state, step=step,
                                        set_aside=not read_only
                                        and workdir_lib.holder(workdir) is None)
  finally:
    checkpointer.close()
  if found is None:
    restores = " restores (see the warnings above)" if had_any else ""
    raise NoCheckpointError(f"no checkpoint in {checkpointer.directory}{restores}; train first "
                            f"with `mmjax train --workdir {workdir}`")
  step, state = found
  return RestoredRun(task=task, mesh=mesh, params=state.params, step=int(step))
