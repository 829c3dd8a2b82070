"""Orbax checkpoints holding the train state and each host's Grain iterator position.

A run's checkpoints live in `<workdir>/checkpoints/<step>`. Orbax writes each into a temporary
folder and renames it to `<step>` only when every file is written, so a kill during a save
leaves the previous steps untouched and no `<step>` folder for the interrupted one.

Restoring takes the newest checkpoint that restores. One that does not (truncated or missing
array files, unreadable metadata) is reported by step and reason and renamed aside to
`<step>.corrupt` (never deleted), and the next older one is tried; orbax ignores the renamed
folder, so `keep_checkpoints` counts good checkpoints only. A checkpoint whose array
structure differs from the config's (a changed model) is not corruption: it is a
`CheckpointMismatchError` naming the first differing arrays, and nothing falls back.
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from mmjax.errors import CheckpointMismatchError, CheckpointSaveError, NoCheckpointError


class CheckpointUnreadable(Exception):
  """A checkpoint step that exists but does not restore (corrupt or partial); internal."""


def warn(message: str) -> None:
  """Prints `mmjax: warning: message` to stderr (what a fallback tells the person)."""
  print(f"mmjax: warning: {message}", file=sys.stderr, flush=True)


def _one_line(error: BaseException, limit: int = 300) -> str:
  """The innermost error of `error`'s chain, on one line: orbax wraps tensorstore's precise
  message ("OUT_OF_RANGE: Error reading <array> ...") in generic ones."""
  seen = set()
  while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  text = " ".join(str(error).split()) or type(error).__name__
  return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _flat_arrays(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{key path: (shape, dtype name)} of a state pytree or of orbax's metadata tree."""
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    flat[jax.tree_util.keystr(path)] = (None if shape is None else tuple(shape),
                                        None if dtype is None else np.dtype(dtype).name)
  return flat


def structure_differences(saved: Any, expected: Any) -> list[str]:
  """The arrays whose path, shape or dtype differ between a saved metadata tree and an
  abstract state (both as `ocp.tree.serialize_tree` lays them out), sorted by path."""
  saved_flat, expected_flat = _flat_arrays(saved), _flat_arrays(expected)
  problems = []
  for key in sorted(set(saved_flat) | set(expected_flat)):
    if key not in expected_flat:
      problems.append(f"{key} is in the checkpoint only")
    elif key not in saved_flat:
      problems.append(f"{key} is in this config only")
    elif saved_flat[key] != expected_flat[key]:
      (s_shape, s_dtype), (e_shape, e_dtype) = saved_flat[key], expected_flat[key]
      problems.append(f"{key}: checkpoint {s_dtype}{list(s_shape or ())} vs config "
                      f"{e_dtype}{list(e_shape or ())}")
  return problems


class Checkpointer:
  """Saves/restores `TrainState` + data iterator state under `<directory>/<step>`.

  Args:
    directory: the run's checkpoints folder.
    keep: how many good checkpoints to keep (older ones are deleted after a save).
    writer: True for the run that owns the workdir (it may save, and it clears the
      temporary folders of saves a kill interrupted); False for readers (eval, sample, warm
      start), which never create or delete anything (they may still rename a corrupt
      checkpoint aside: see `restore_latest`).
  Saves are asynchronous (training continues while arrays are written).
  """

  def __init__(self, directory: str | pathlib.Path, keep: int = 3, *, writer: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=writer,
                                             cleanup_tmp_directories=writer),
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts writing checkpoint `step`; CheckpointSaveError (naming the folder and the OS
    error) if this save, or the previous one still in flight, fails."""
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
    except Exception as e:
      raise self._save_error(step, e) from e

  def wait(self) -> None:
    """Blocks until the saves in flight are written; CheckpointSaveError if one failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(self.latest_step(), e, in_flight=True) from e

  def _save_error(self, step, error: Exception, in_flight: bool = False) -> CheckpointSaveError:
    self.manager.reload()
    good = self.latest_step()
    kept = (f"the last good checkpoint is {self.directory / str(good)}" if good is not None
            else "no checkpoint was written yet")
    which = "a checkpoint save in flight" if in_flight else f"saving checkpoint step {step}"
    return CheckpointSaveError(f"{which} to {self.directory} failed ({_one_line(error)}); "
                               f"{kept}")

  def check_structure(self, step: int, abstract_state: Any) -> None:
    """Compares checkpoint `step`'s saved array metadata with `abstract_state`.

    Raises CheckpointMismatchError naming the first differing arrays, or CheckpointUnreadable
    if the metadata cannot be read. Checked before restoring because orbax's own error for a
    shape mismatch is the same kind as for a corrupt file (and a target without a sharding
    gets the saved shape back without any error).
    """
    try:
      metadata = self.manager.item_metadata(step)
      saved = metadata["state"] if "state" in metadata else None
    except Exception as e:
      raise CheckpointUnreadable(f"its metadata does not load ({_one_line(e)})") from e
    if saved is None or getattr(saved, "tree", None) is None:
      raise CheckpointUnreadable("its 'state' item or that item's _METADATA file is missing")
    expected = ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True)
    problems = structure_differences(saved.tree, expected)
    if problems:
      shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)"
                                         if len(problems) > 4 else "")
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not match this config's "
          f"model/optimizer ({shown}); was it written by another config? Train this config in "
          f"a new --workdir, or use the config the run was trained with")

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """Restores `step` into arrays shaped/sharded like `abstract_state` (and, if given, sets
    `data_iterator` to the saved position).

    Raises CheckpointMismatchError for another model's checkpoint, CheckpointUnreadable for a
    corrupt or partial one.
    """
    self.check_structure(step, abstract_state)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      raise CheckpointUnreadable(_one_line(e)) from e
    return restored["state"]

  def restore_latest(self, abstract_state: Any, data_iterator: Any = None, *,
                     set_aside: bool = True, step: int | None = None,
                     warn: Callable[[str], None] = warn) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that restores, or None if there is none.

    Each newer one that does not restore is reported through `warn` with its reason and, when
    `set_aside` (the process that owns the workdir), renamed to `<step>.corrupt`. With `step`
    given, only that step is tried: NoCheckpointError if it is absent or does not restore.
    A structure mismatch raises CheckpointMismatchError at once.
    """
    steps = self.steps()
    if step is not None:
      if step not in steps:
        raise NoCheckpointError(f"no checkpoint of step {step} in {self.directory} (it has "
                                f"{steps or 'none'})")
      steps = [step]
    for candidate in reversed(steps):
      try:
        reason = None
        state = self.restore(candidate, abstract_state, data_iterator)
      except CheckpointUnreadable as e:
        reason = str(e)
      if not _all_hosts_agree(reason is None):
        reason = reason or "another host could not restore it"
      if reason is None:
        return candidate, state
      if step is not None:
        raise NoCheckpointError(f"checkpoint {self.directory / str(candidate)} does not "
                                f"restore: {reason}")
      where = self.directory / str(candidate)
      if set_aside:
        aside = self._set_aside(candidate)
        warn(f"checkpoint {where} does not restore ({reason}); renamed it to {aside.name} "
             f"and trying the previous one")
      else:
        warn(f"checkpoint {where} does not restore ({reason}); trying the previous one")
    return None

  def _set_aside(self, step: int) -> pathlib.Path:
    """Renames `<step>` to the first free `<step>.corrupt[.k]` (process 0; all hosts wait)."""
    source = self.directory / str(step)
    target, k = self.directory / f"{step}.corrupt", 0
    while target.exists():
      k += 1
      target = self.directory / f"{step}.corrupt.{k}"
    if jax.process_index() == 0:
      source.rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"mmjax_set_aside_{step}")
    self.manager.reload()
    return target

  def close(self) -> None:
    self.manager.close()


def _all_hosts_agree(ok: bool) -> bool:
  """True iff `ok` on every host: all hosts must fall back together or not at all."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))
