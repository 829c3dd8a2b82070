"""Helpers of the tests that run the trainer, in-process or as a real `mmjax` child process."""
import contextlib
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np

from conftest import CONFIG, ROOT, TINY


def train_args(workdir, *extra, config=CONFIG, tiny=TINY):
  """`mmjax train` arguments for the tiny config plus `extra` overrides."""
  return ["train", "--config", str(config), "--workdir", str(workdir), "--no-progress",
          *[f"--config.{o}" for o in list(tiny) + list(extra)]]


def cli_args(workdir, *extra):
  return ["-m", "mmjax.cli", *train_args(workdir, *extra)]


def child_env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_PLATFORMS="cpu")


@contextlib.contextmanager
def child(args, log_path):
  """A `python *args` process (own process group, output to `log_path`), killed with its
  whole group on the way out whatever happens in the block."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, *args], env=child_env(), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
      yield proc
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def committed_steps(workdir):
  """Checkpoint steps orbax has committed (in-flight saves live in non-numeric tmp dirs)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if directory.is_dir() else []


def tail(path):
  return pathlib.Path(path).read_text()[-3000:]


def assert_trees_equal(actual, expected, what):
  assert jax.tree.structure(actual) == jax.tree.structure(expected), what
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e),
                                  err_msg=f"{what}{jax.tree_util.keystr(path)}")


# Holds the workdir: trains to its first checkpoint, then stalls before its next step.
STALLING_STEP_CHILD = """
import sys, time
from mmjax import cli
from mmjax.train.tasks.contrastive import ContrastiveTask
stall_at, check_batch = int(sys.argv[1]), ContrastiveTask.check_batch
def stalling_check_batch(self, batch, step):
  if step >= stall_at:
    time.sleep(3600)
  return check_batch(self, batch, step)
ContrastiveTask.check_batch = stalling_check_batch
sys.exit(cli.main(sys.argv[2:]))
"""
