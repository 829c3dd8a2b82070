"""Runs that meet faults: corrupt checkpoints, a kill during a save, a changed model, two runs
on one workdir, an unwritable workdir, failed saves and metric writes.

Every resume is compared bit for bit with one uninterrupted reference run of the same config.
"""
import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from mmjax import cli
from mmjax.data import pipeline
from mmjax.data.folder import ImageTextFolder
from mmjax.data.shapeworld import ShapeWorld
from mmjax.data.shapeworld_inputs import bad_example_options
from mmjax.errors import (CheckpointMismatchError, CheckpointSaveError, MetricsWriteError,
                          WorkdirInUseError, WorkdirNotWritableError)
from mmjax.train import workdir as workdir_lib
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.logging import read_jsonl
from mmjax.train.restore import restore_params
from mmjax.train.tasks.contrastive import ContrastiveTask
from mmjax.train.trainer import train

from conftest import CONFIG, ROOT, TINY, tiny_config
from runs import (STALLING_STEP_CHILD, assert_trees_equal, child, child_env, committed_steps,
                  tail, train_args)

TOTAL_STEPS, EVERY, SEED = 8, 3, 7
STEPS = (f"total_steps={TOTAL_STEPS}", f"checkpoint_every={EVERY}", f"seed={SEED}")
DEVICES = 2


def _config(*extra):
  return tiny_config(*STEPS, *extra)


def _train(config, workdir):
  return train(config, workdir, progress=False, devices=jax.devices()[:DEVICES])


class _Halt(Exception):
  """Stops an in-process run before a given step, as a crash there would."""


def _no_eval(mp):
  """The fault tests compare training state only: no end-of-run evaluation or plots."""
  mp.setattr(ContrastiveTask, "evaluate", lambda self, params, mesh: {})
  mp.setattr(ContrastiveTask, "write_artifacts", lambda self, params, mesh, workdir: [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(reference TrainResult of 8 uninterrupted steps, workdir of the same config halted
  before step 7 with checkpoints 3 and 6)."""
  base = tmp_path_factory.mktemp("faults")
  with pytest.MonkeyPatch.context() as mp:
    _no_eval(mp)
    reference = _train(_config(), base / "reference")
    check_batch = ContrastiveTask.check_batch

    def halting_check_batch(self, batch, step):
      if step >= 2 * EVERY:
        raise _Halt(step)
      return check_batch(self, batch, step)

    mp.setattr(ContrastiveTask, "check_batch", halting_check_batch)
    with pytest.raises(_Halt):
      _train(_config(), base / "halted")
  assert committed_steps(base / "halted") == [EVERY, 2 * EVERY]
  assert not (base / "halted" / workdir_lib.LOCK_NAME).exists()  # released on the way out
  return reference, base / "halted"


def _copy(run, tmp_path, name="run"):
  target = tmp_path / name
  shutil.copytree(run, target)
  return target


def _largest_array_file(checkpoint):
  files = [p for p in (checkpoint / "state").rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(checkpoint):
  path = _largest_array_file(checkpoint)
  with open(path, "r+b") as f:
    f.truncate(100)


CORRUPTIONS = {
    "truncated array file": _truncate,
    "garbage metadata": lambda checkpoint: (checkpoint / "state" / "_METADATA").write_text("{x"),
    "deleted metadata": lambda checkpoint: (checkpoint / "state" / "_METADATA").unlink(),
    "deleted data position": lambda checkpoint: (
        checkpoint / "data" / "process_0-of-1.json").unlink(),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
    runs, tmp_path, monkeypatch, capsys, corruption):
  reference, halted = runs
  workdir = _copy(halted, tmp_path)
  bad = workdir / "checkpoints" / str(2 * EVERY)
  CORRUPTIONS[corruption](bad)
  bad_files = sorted(str(p.relative_to(bad)) for p in bad.rglob("*"))
  _no_eval(monkeypatch)
  capsys.readouterr()
  resumed = _train(_config(), workdir)
  out, err = capsys.readouterr()
  assert f"checkpoint {bad.absolute()} does not restore (" in err, err
  assert f"renamed it to {2 * EVERY}.corrupt" in err, err
  assert f"Resumed from {(workdir / 'checkpoints').absolute() / str(EVERY)}\n" in out
  # The bad checkpoint is kept, as it was, beside the good ones (keep_checkpoints=2 counts
  # only good ones: 6 and 8 are kept, 3 is deleted as usual).
  aside = workdir / "checkpoints" / f"{2 * EVERY}.corrupt"
  assert sorted(str(p.relative_to(aside)) for p in aside.rglob("*")) == bad_files
  assert committed_steps(workdir) == [2 * EVERY, TOTAL_STEPS]
  assert resumed.step == TOTAL_STEPS
  assert_trees_equal(resumed.state.params, reference.state.params, "params")
  assert_trees_equal(resumed.state.opt_state, reference.state.opt_state, "opt_state")


def _eval_args(workdir):
  return ["eval", "--config", str(CONFIG), "--workdir", str(workdir),
          *[f"--config.{o}" for o in TINY + list(STEPS)]]


HOLDER = """
import sys, time
from mmjax.train import workdir
with workdir.hold(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def test_eval_falls_back_and_leaves_a_live_runs_checkpoints_in_place(runs, tmp_path, capsys):
  _, halted = runs
  workdir = _copy(halted, tmp_path)
  bad = workdir / "checkpoints" / str(2 * EVERY)
  _truncate(bad)
  # While another process holds the workdir, eval falls back without touching its files.
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], env=child_env(),
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline() == "held\n"
    assert workdir_lib.holder(workdir)["pid"] == proc.pid
    assert cli.main(_eval_args(workdir)) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {bad.absolute()} does not restore" in err and "renamed" not in err
    assert bad.is_dir()
  finally:
    proc.kill()
    proc.wait()
  assert workdir_lib.holder(workdir) is None  # the kernel dropped the dead holder's lock
  assert cli.main(_eval_args(workdir)) == 0
  assert f"renamed it to {2 * EVERY}.corrupt" in capsys.readouterr().err
  assert not bad.exists() and (workdir / "checkpoints" / f"{2 * EVERY}.corrupt").is_dir()
  assert sorted(p.name for p in (workdir / "eval").iterdir()) == [f"step_{EVERY}.json"]
  # With every checkpoint corrupt, eval says so in one line and exits 2.
  _truncate(workdir / "checkpoints" / str(EVERY))
  assert cli.main(_eval_args(workdir)) == 2
  err = capsys.readouterr().err.splitlines()
  assert err[-1].startswith("mmjax: error: no checkpoint in ") and "restores" in err[-1]


def test_a_changed_model_is_a_mismatch_error_not_a_fallback(runs, tmp_path, capsys):
  _, halted = runs
  workdir = _copy(halted, tmp_path)
  with pytest.raises(CheckpointMismatchError,
                     match=r"checkpoint .*/6 does not match this config's model/optimizer "
                           r"\(\['opt_state'\]\S*: checkpoint float32\[[\d, ]+\] vs config "
                           r"float32\[[\d, ]*32[\d, ]*\]"):
    _train(_config("model.embed_dim=32"), workdir)
  assert committed_steps(workdir) == [EVERY, 2 * EVERY]
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(EVERY), str(2 * EVERY)]
  # The same through the command line: one line, status 2.
  assert cli.main([*_eval_args(workdir), "--config.model.embed_dim=32"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("mmjax: error: checkpoint "), err


# The child trains to the step-3 checkpoint, then its step-6 save stalls after writing part of
# the checkpoint (the data position) into orbax's temporary folder, until the parent's SIGKILL.
STALLING_SAVE_CHILD = """
import pathlib, sys, time
import grain
from mmjax import cli
stall_step, marker, save = sys.argv[1], pathlib.Path(sys.argv[2]), grain.checkpoint.CheckpointHandler.save
def stalling_save(self, directory, item=None, args=None):
  save(self, directory, item, args)
  if pathlib.Path(str(directory)).parent.name.startswith(stall_step + "."):
    marker.write_text(str(directory))
    time.sleep(3600)
grain.checkpoint.CheckpointHandler.save = stalling_save
sys.exit(cli.main(sys.argv[3:]))
"""


def test_sigkill_during_a_save_keeps_the_previous_checkpoint_and_resumes(runs, tmp_path,
                                                                          monkeypatch, capsys):
  reference, _ = runs
  workdir, marker, log = tmp_path / "killed", tmp_path / "stalled", tmp_path / "child.log"
  args = ["-c", STALLING_SAVE_CHILD, str(2 * EVERY), str(marker), *train_args(workdir, *STEPS)]
  with child(args, log) as proc:
    deadline = time.monotonic() + 300
    while not marker.exists():
      assert proc.poll() is None, f"child exited ({proc.returncode}): " + tail(log)
      assert time.monotonic() < deadline, "the save never started: " + tail(log)
      time.sleep(0.05)
    in_flight = [d for d in os.listdir(workdir / "checkpoints") if not d.isdigit()]
    assert in_flight and all(d.startswith(f"{2 * EVERY}.") for d in in_flight), in_flight
    assert committed_steps(workdir) == [EVERY]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert committed_steps(workdir) == [EVERY]
  # The next run's checkpointer clears what the killed save left, in a background thread
  # (orbax would reuse the folder for step 6, but a run that never saves step 6 again would
  # keep it forever).
  checkpointer, deadline = Checkpointer(workdir / "checkpoints"), time.monotonic() + 30
  while len(os.listdir(workdir / "checkpoints")) > 1 and time.monotonic() < deadline:
    time.sleep(0.05)
  checkpointer.close()
  assert os.listdir(workdir / "checkpoints") == [str(EVERY)]
  _no_eval(monkeypatch)
  capsys.readouterr()
  resumed = _train(_config(), workdir)
  out, err = capsys.readouterr()
  assert f"Resumed from {(workdir / 'checkpoints').absolute() / str(EVERY)}\n" in out
  assert "taking over the stale lock of pid" in err  # the killed child never released it
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(2 * EVERY), str(TOTAL_STEPS)]
  assert_trees_equal(resumed.state.params, reference.state.params, "params")
  assert_trees_equal(resumed.state.opt_state, reference.state.opt_state, "opt_state")


def test_a_second_run_on_a_workdir_in_use_fails_at_once_naming_the_holder(tmp_path):
  workdir, log = tmp_path / "shared", tmp_path / "first.log"
  first = ["-c", STALLING_STEP_CHILD, "1", *train_args(workdir, *STEPS)]
  with child(first, log) as proc:
    deadline = time.monotonic() + 300
    # The holder takes the lock, then writes config.json under it: wait for both.
    while workdir_lib.holder(workdir) is None or not (workdir / "config.json").exists():
      assert proc.poll() is None, f"first run exited ({proc.returncode}): " + tail(log)
      assert time.monotonic() < deadline, "the first run never took the lock: " + tail(log)
      time.sleep(0.05)
    config_json = (workdir / "config.json").read_text()
    second = subprocess.run([sys.executable, "-m", "mmjax.cli",
                             *train_args(workdir, *STEPS, "seed=8")],
                            env=child_env(), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith(f"mmjax: error: workdir {workdir} is in use by another `mmjax "
                               f"train`: pid {proc.pid} on host "), lines[0]
    assert (workdir / "config.json").read_text() == config_json  # the holder's config stays
    with pytest.raises(WorkdirInUseError, match=f"pid {proc.pid} on host"):
      train(_config(), workdir, progress=False)
  # The first run is dead (SIGKILLed on leaving the block): its lock is stale, not in use.
  assert workdir_lib.holder(workdir) is None


def _read_only_dir(tmp_path):
  """A folder this process cannot create files in: a chmod 0o555 one unless we are root
  (root ignores modes), else a read-only system folder."""
  candidates = [tmp_path / "read_only", pathlib.Path("/sys/fs"), pathlib.Path("/proc/sys")]
  candidates[0].mkdir()
  candidates[0].chmod(0o555)
  for folder in candidates:
    try:
      (folder / "mmjax_probe").mkdir()
    except OSError:
      return folder
    (folder / "mmjax_probe").rmdir()
  pytest.skip("no read-only folder found on this machine")


def test_an_unwritable_workdir_fails_before_step_0(tmp_path, capsys):
  parent = _read_only_dir(tmp_path)
  workdir = parent / "run"
  with pytest.raises(WorkdirNotWritableError, match=f"workdir {workdir} is not writable"):
    train(_config(), workdir, progress=False)
  assert cli.main(train_args(workdir, *STEPS)) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(f"mmjax: error: workdir {workdir} is not "
                                             "writable ("), err
  # A file where the workdir should be is the same fault, with the OS's reason.
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(WorkdirNotWritableError, match="Not a directory"):
    train(_config(), blocker / "run", progress=False)


def test_a_failed_save_stops_the_run_naming_the_error_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys):
  async_save = ocp.StandardCheckpointHandler.async_save

  def disk_full_from_step_6(self, directory, *args, **kwargs):
    if pathlib.Path(str(directory)).parent.name.startswith(f"{2 * EVERY}."):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return async_save(self, directory, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", disk_full_from_step_6)
  _no_eval(monkeypatch)
  workdir = tmp_path / "full"
  with pytest.raises(CheckpointSaveError, match=r"saving checkpoint step 6 to .* failed "
                                                r"\(OSError: \[Errno 28\] No space left on "
                                                r"device.*; the last good checkpoint is .*/3$"):
    _train(_config(), workdir)
  assert committed_steps(workdir) == [EVERY]
  assert restore_params(_config(), workdir, devices=jax.devices()[:DEVICES]).step == EVERY
  # Through the command line (resuming from 3): one line, status 1 (a fault, not a user error).
  capsys.readouterr()
  assert cli.main(train_args(workdir, *STEPS)) == 1
  err = capsys.readouterr().err.splitlines()
  assert err[-1].startswith("mmjax: error: saving checkpoint step 6 to "), err
  assert not [line for line in err if "Traceback" in line]
  assert committed_steps(workdir) == [EVERY]


def test_a_full_disk_under_the_metrics_file_stops_the_run_and_keeps_the_checkpoint(
    tmp_path, monkeypatch):
  if not os.path.exists("/dev/full"):
    pytest.skip("no /dev/full on this machine")
  _no_eval(monkeypatch)
  workdir = tmp_path / "metrics_full"
  workdir.mkdir()
  (workdir / "train.jsonl").symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
  with pytest.raises(MetricsWriteError, match=r"cannot append step 4 to .*train.jsonl \(No "
                                              r"space left on device\)"):
    _train(_config("log_every=4"), workdir)
  assert committed_steps(workdir) == [EVERY]


def _shapeworld_folder(folder, count, bad):
  """`count` ShapeWorld train examples as PNG files + JSONL (their own captions); the files
  of the indices in `bad` are garbage bytes."""
  folder.mkdir()
  world, records = ShapeWorld(split="train", length=count, seed=0, image_size=16), []
  for i in range(count):
    item = world[i]
    if i in bad:
      (folder / f"{i}.png").write_bytes(b"\x89PNG truncated")
    else:
      Image.fromarray(np.asarray(item["image"])).save(folder / f"{i}.png")
    records.append({"image": f"{i}.png", "caption": list(item["captions"])})
  (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  return folder


def test_bad_images_are_skipped_and_counted_in_metrics(tmp_path, monkeypatch):
  """The trainer's side of `data.on_bad_example` (the pipeline's is tests/data/
  test_bad_examples.py): the skip counts reach metrics.jsonl."""
  folder = _shapeworld_folder(tmp_path / "images", 40, bad={3, 17})

  def folder_batches(self, process_index, process_count):
    return pipeline.batch_iterator(pipeline.image_text_batches(
        ImageTextFolder(folder, image_size=16), self.tokenizer,
        batch_size=self.config.batch_size // process_count,
        context_length=self.config.data.context_length, seed=self.config.seed,
        process_index=process_index, process_count=process_count,
        **bad_example_options(self.config.data)))

  monkeypatch.setattr(ContrastiveTask, "train_batches", folder_batches)
  _no_eval(monkeypatch)
  workdir = tmp_path / "skipping"
  result = _train(_config("total_steps=4", "data.on_bad_example=skip",
                          "data.max_bad_fraction=0.1"), workdir)
  assert result.step == 4
  (record,) = read_jsonl(workdir / "metrics.jsonl")
  assert record["step"] == 4 and record["data_bad_examples"] >= 2, record  # 64 rows > 1 epoch
  assert record["data_examples_loaded"] >= 64 + record["data_bad_examples"]
