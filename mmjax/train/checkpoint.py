"""Orbax checkpoints holding the train state and each host's Grain iterator position."""
from __future__ import annotations

import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves/restores `TrainState` + data iterator state under `<workdir>/checkpoints/<step>`.

  Saves are asynchronous (training continues while arrays are written); a save interrupted by a
  kill leaves no committed step, so restore always finds the last complete checkpoint.
  """

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
    """Restores `step` into arrays shaped/sharded like `abstract_state`; sets the iterator."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except ValueError as e:
      raise ValueError(f"checkpoint {self.directory / str(step)} does not match this config's "
                       f"model/optimizer structure (was it written by another config?): {e}"
                       ) from e
    return restored["state"]

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores only the train state (evaluation needs no data position)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
