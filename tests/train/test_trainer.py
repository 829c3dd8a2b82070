"""End-to-end runs of the one trainer: outputs, resume, preemption, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmjax.train.logging import read_jsonl
from mmjax import cli
from mmjax.train.trainer import NonFiniteLossError, evaluate_checkpoint, train

from conftest import CONFIG, ROOT, TINY, tiny_config

EVAL_KEYS = {"step", "loss", "zeroshot_top1", "i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1",
             "t2i_r@5", "t2i_r@10"}


def test_run_writes_metrics_checkpoints_and_plots(tmp_path):
  result = train(tiny_config("eval_every=3", "checkpoint_every=3"), tmp_path, progress=False,
                 devices=jax.devices()[:2])
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [3, 6]
  for record in records:
    assert EVAL_KEYS <= set(record), set(record)
    for key in EVAL_KEYS - {"step", "loss"}:
      assert 0.0 <= record[key] <= 1.0
  assert result.step == 6 and not result.preempted
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  assert (tmp_path / "loss.png").stat().st_size > 1000
  assert (tmp_path / "retrieval.png").stat().st_size > 1000
  # Restoring the last checkpoint reproduces the last evaluation.
  restored = evaluate_checkpoint(tiny_config(), tmp_path, devices=jax.devices()[:2])
  assert restored.pop("step") == 6
  for key, value in restored.items():
    np.testing.assert_allclose(value, result.eval_metrics[key], rtol=1e-5, err_msg=key)


def test_eval_of_a_workdir_without_checkpoints_fails_clearly_and_writes_nothing(tmp_path, capsys):
  empty = tmp_path / "never_trained"
  code = cli.main(["eval", "--config", str(CONFIG), "--workdir", str(empty)])
  assert code == 2 and "no checkpoint in" in capsys.readouterr().err
  assert not empty.exists()


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _cli(workdir, *extra):
  return [sys.executable, "-m", "mmjax.cli", "train", "--config", str(CONFIG), "--workdir",
          str(workdir), "--no-progress", *[f"--config.{o}" for o in TINY + list(extra)]]


def _env():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  return env


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  steps = ["total_steps=40", "checkpoint_every=5", "eval_every=40"]
  # Reference: uninterrupted run in this process on the same 2-device mesh.
  reference = train(tiny_config(*steps), tmp_path / "ref", progress=False, devices=jax.devices()[:2])

  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_cli(workdir, *steps), env=_env(), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline:  # kill after a checkpoint exists, before the run ends
    done = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()] if (
        workdir / "checkpoints").exists() else []
    if any(5 <= d < 40 for d in done):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL

  resumed = train(tiny_config(*steps), workdir, progress=False, devices=jax.devices()[:2])
  assert resumed.step == 40
  for a, b in zip(_params(reference.state), _params(resumed.state)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_a_checkpoint(tmp_path):
  workdir = tmp_path / "term"
  proc = subprocess.Popen(_cli(workdir, "total_steps=100000", "checkpoint_every=100000"),
                          env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not (workdir / "train.jsonl").exists():
    time.sleep(0.1)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, out
  assert "SIGTERM received: saved checkpoint at step" in out
  saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(saved) == 1 and 0 < saved[0] < 100000


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  train(tiny_config("total_steps=4", "checkpoint_every=2"), tmp_path, progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  # Resume with a learning rate that blows up: the run must stop, naming the step.
  with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at step \d+.*last good "
                                               r"checkpoint: step 4"):
    train(tiny_config("total_steps=60", "checkpoint_every=1000", "optim.learning_rate=1e999",
                      "optim.warmup_steps=0"), tmp_path, progress=False)
  assert "4" in os.listdir(tmp_path / "checkpoints")


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the data-parallel size 8"):
    train(tiny_config("batch_size=12"), tmp_path, progress=False)
