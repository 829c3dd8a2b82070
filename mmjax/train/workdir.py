"""A training run's hold on its workdir: one run per workdir (a lock file), checked writable.

One run per workdir: `<workdir>/train.lock`, held while `mmjax train` runs.

The lock is an exclusive `flock` on the file, so it is released by the kernel when its
process dies however it dies (a SIGKILL included); the file's JSON ({"pid", "host",
"started"}) names the holder for the error a second run gets. A file left by a dead run is a
stale lock: the next run takes it over and says so. The holder refreshes the file's mtime as
it trains, so a lock taken on another host (a shared file system whose `flock` does not reach
across hosts) counts as live while it is fresh (`FOREIGN_HOST_STALE_S`).

Multi-host runs take the lock on process 0 only. Readers (eval, sample, warm start) never take
it; they ask `holder(workdir)` before renaming a corrupt checkpoint aside.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

from mmjax.errors import WorkdirInUseError, WorkdirNotWritableError

LOCK_NAME = "train.lock"
FOREIGN_HOST_STALE_S = 15 * 60

_held: dict[str, "_Lock"] = {}  # lock path -> this process's lock on it (re-entrant use)


def _describe(info: dict) -> str:
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started "
          f"{info.get('started', '?')})")


def _read(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text() or "{}")
  except (OSError, ValueError):
    return {}


class _Lock:
  def __init__(self, path: pathlib.Path, fd: int):
    self.path, self.fd, self.depth, self.last_touch = path, fd, 1, 0.0

  def touch(self, every_s: float = 30.0) -> None:
    now = time.monotonic()
    if now - self.last_touch >= every_s:
      self.last_touch = now
      with contextlib.suppress(OSError):
        os.utime(self.fd)

  def release(self) -> None:
    with contextlib.suppress(OSError):
      self.path.unlink()  # Unlink while locked: a waiting opener then sees a fresh inode.
    os.close(self.fd)


def _open_locked(path: pathlib.Path) -> int | None:
  """fd of `path` with our exclusive flock on it, or None if another process holds it."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        return None
      raise
    # The holder may have unlinked the file between our open and our flock: retry on the
    # path's current inode so two runs never lock two different files of one name.
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)


def _acquire(workdir: pathlib.Path) -> _Lock:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    fd = _open_locked(path)
  except OSError as e:
    raise WorkdirNotWritableError(f"workdir {workdir} is not writable ({e.strerror or e}); "
                                  "choose a --workdir you can write to") from e
  if fd is None:
    raise WorkdirInUseError(f"workdir {workdir} is in use by another `mmjax train`: "
                            f"{_describe(_read(path))}; lock file {path}. Stop that run or "
                            "use another --workdir")
  previous = _read(path)
  host = socket.gethostname()
  if previous.get("host") not in (None, host):
    age = time.time() - os.fstat(fd).st_mtime
    if age < FOREIGN_HOST_STALE_S:
      os.close(fd)
      raise WorkdirInUseError(
          f"workdir {workdir} is locked by {_describe(previous)}, last alive {age:.0f} s ago; "
          f"another host cannot check that process. If it has ended, delete {path}")
  if previous.get("pid") not in (None, os.getpid()):
    print(f"mmjax: note: taking over the stale lock of {_describe(previous)}, which ended "
          f"without releasing {path}", file=sys.stderr)
  info = {"pid": os.getpid(), "host": host,
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)
  except OSError as e:
    os.close(fd)
    raise WorkdirNotWritableError(f"workdir {workdir} is not writable: cannot write {path} "
                                  f"({e.strerror or e})") from e
  return _Lock(path, fd)


@contextlib.contextmanager
def hold(workdir: str | pathlib.Path, enabled: bool = True):
  """Holds `<workdir>/train.lock` for the block; re-entrant within one process.

  Raises WorkdirInUseError (naming the holder's pid and host) if another live run holds it,
  WorkdirNotWritableError if the workdir cannot be created or written. Yields the lock (its
  `touch()` marks the run alive) or None when not `enabled` (multi-host processes > 0).
  """
  if not enabled:
    yield None
    return
  key = str((pathlib.Path(workdir).absolute() / LOCK_NAME))
  lock = _held.get(key)
  if lock is not None:
    lock.depth += 1
  else:
    lock = _held[key] = _acquire(pathlib.Path(workdir).absolute())
  try:
    yield lock
  finally:
    lock.depth -= 1
    if lock.depth == 0:
      del _held[key]
      lock.release()


def holder(workdir: str | pathlib.Path) -> dict | None:
  """{"pid", "host", "started"} of a live run holding the workdir's lock (not this process),
  else None. A reader uses it to leave a running run's files alone."""
  path = pathlib.Path(workdir).absolute() / LOCK_NAME
  if str(path) in _held or not path.exists():
    return None
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
      return _read(path) or {"pid": "?", "host": "?"}
    fcntl.flock(fd, fcntl.LOCK_UN)
    info = _read(path)
    if info.get("host") not in (None, socket.gethostname()) and (
        time.time() - os.fstat(fd).st_mtime < FOREIGN_HOST_STALE_S):
      return info
    return None
  finally:
    os.close(fd)


def check_writable(directory: str | pathlib.Path) -> None:
  """Creates `directory` if needed and writes/removes a probe file in it, before step 0;
  WorkdirNotWritableError naming the folder and the OS error otherwise."""
  directory = pathlib.Path(directory).absolute()
  probe = directory / f".mmjax_write_probe.{socket.gethostname()}.{os.getpid()}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok\n")
      f.flush()
      os.fsync(f.fileno())
    probe.unlink()
  except OSError as e:
    raise WorkdirNotWritableError(f"{directory} is not writable ({e.strerror or e}); choose a "
                                  "--workdir you can write to") from e
