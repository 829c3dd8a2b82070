"""The errors mmjax raises for faults a person must read: what went wrong, where, what to do.

Two kinds, because a scheduler or a shell script treats them differently:

- `UserError`: the command cannot work as given (a config key, a data file, a checkpoint that
  belongs to another model, a workdir another run holds). Retrying changes nothing.
  `mmjax` prints one `mmjax: error: ...` line and exits with status 2.
- `RunFault`: the run started and then met a fault of its machine or its numbers (a full disk,
  a failed save, a NaN loss). The last good checkpoint is kept; `mmjax` prints one line and
  exits with status 1.

Both keep the builtin base a caller would catch without mmjax (ValueError, OSError, ...), so
library users who catch those keep working. Errors that are neither are mmjax's own bugs and
keep their traceback.
"""
from __future__ import annotations


class MmjaxError(Exception):
  """Base of the errors `mmjax` reports as one line."""


class UserError(MmjaxError):
  """The command, config, data or workdir as given cannot work; exit status 2."""


class RunFault(MmjaxError):
  """A started run stopped on a fault (disk, save, non-finite loss); exit status 1."""


class ConfigError(UserError, ValueError):
  """A config value or key that cannot work."""


class DataError(UserError, ValueError):
  """Training data that cannot be used (e.g. more unreadable examples than allowed)."""


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint whose arrays do not match this config's model/optimizer (a changed model)."""


class NoCheckpointError(UserError, FileNotFoundError):
  """A workdir with no checkpoint that restores."""


class WorkdirInUseError(UserError, RuntimeError):
  """Another live `mmjax train` holds the workdir's lock."""


class WorkdirNotWritableError(UserError, OSError):
  """The workdir (or its checkpoints folder) cannot be written; found before step 0."""


class CheckpointSaveError(RunFault, OSError):
  """Writing a checkpoint failed (disk full, permissions, a vanished folder)."""


class MetricsWriteError(RunFault, OSError):
  """Appending to metrics.jsonl / train.jsonl failed."""
