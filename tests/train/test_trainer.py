"""End-to-end runs of the one trainer: outputs, resume, preemption, bad input."""
import json
import os
import signal
import time

import grain
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import cli
from mmjax.train import sharding
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.logging import read_jsonl
from mmjax.train.state import TrainState
from mmjax.train.tasks.contrastive import ContrastiveTask
from mmjax.train.trainer import NonFiniteLossError, evaluate_checkpoint, train

from conftest import CONFIG, tiny_config
from runs import STALLING_STEP_CHILD, assert_trees_equal as _assert_trees_equal, child as _child, \
    cli_args as _cli, committed_steps as _committed_steps, tail as _tail, train_args as _train_args

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


def _without_eval(monkeypatch):
  """Resume tests compare training state only: skip the end-of-run evaluation and plots."""
  monkeypatch.setattr(ContrastiveTask, "evaluate", lambda self, params, mesh: {})
  monkeypatch.setattr(ContrastiveTask, "write_artifacts", lambda self, params, mesh, workdir: [])


# The killed child trains to its first checkpoint, then stalls before its next step (as a hung
# host would) until the parent's SIGKILL: the kill always lands mid-run, after that checkpoint.
STALLING_CHILD = STALLING_STEP_CHILD

TOTAL_STEPS, FIRST_CHECKPOINT, SEED = 8, 3, 7
RESUME_STEPS = (f"total_steps={TOTAL_STEPS}", f"checkpoint_every={FIRST_CHECKPOINT}",
                f"seed={SEED}")


def test_sigkill_then_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
  _without_eval(monkeypatch)
  config = tiny_config(*RESUME_STEPS)
  workdir, log = tmp_path / "killed", tmp_path / "killed.log"
  child = ["-c", STALLING_CHILD, str(FIRST_CHECKPOINT), *_train_args(workdir, *RESUME_STEPS)]
  with _child(child, log) as proc:
    # The uninterrupted reference trains here meanwhile, on the same 2-device mesh.
    reference = train(config, tmp_path / "ref", progress=False, devices=jax.devices()[:2])
    deadline = time.monotonic() + 300
    while not _committed_steps(workdir):
      assert proc.poll() is None, (f"child exited ({proc.returncode}) before any checkpoint: "
                                   + _tail(log))
      assert time.monotonic() < deadline, "no checkpoint within 300 s: " + _tail(log)
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL, _tail(log)
  assert _committed_steps(workdir) == [FIRST_CHECKPOINT], _tail(log)

  capsys.readouterr()
  resumed = train(config, workdir, progress=False, devices=jax.devices()[:2])
  resumed_from = (workdir / "checkpoints").absolute() / str(FIRST_CHECKPOINT)
  assert f"Resumed from {resumed_from}\n" in capsys.readouterr().out

  assert resumed.step == reference.step == TOTAL_STEPS
  assert int(resumed.state.step) == int(reference.state.step) == TOTAL_STEPS
  _assert_trees_equal(resumed.state.params, reference.state.params, "params")
  _assert_trees_equal(resumed.state.opt_state, reference.state.opt_state, "opt_state")
  # The run's key is its seed's (seed 7: a fresh key(0) or zeros would differ).
  expected_rng = jax.random.key_data(jax.random.key(SEED))
  np.testing.assert_array_equal(resumed.state.rng, expected_rng)
  np.testing.assert_array_equal(reference.state.rng, expected_rng)
  # Both final checkpoints hold the data position of a fresh iterator advanced TOTAL_STEPS
  # batches.
  batches = ContrastiveTask(config).train_batches(0, 1)
  for _ in range(TOTAL_STEPS):
    next(batches)
  expected_position = json.loads(json.dumps(batches.get_state()))
  for run in (workdir, tmp_path / "ref"):
    saved = run / "checkpoints" / str(TOTAL_STEPS) / "data" / "process_0-of-1.json"
    assert json.loads(saved.read_text()) == expected_position, run


def test_sigterm_saves_a_checkpoint(tmp_path):
  workdir, log = tmp_path / "term", tmp_path / "term.log"
  with _child(_cli(workdir, "total_steps=100000", "checkpoint_every=100000"), log) as proc:
    deadline = time.monotonic() + 240
    while not (workdir / "train.jsonl").exists():
      assert proc.poll() is None, f"child exited ({proc.returncode}) early: " + _tail(log)
      assert time.monotonic() < deadline, "no step logged within 240 s: " + _tail(log)
      time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
  out = log.read_text()
  assert proc.returncode == 143, out[-3000:]
  assert "SIGTERM received: saved checkpoint at step" in out
  saved = _committed_steps(workdir)
  assert len(saved) == 1 and 0 < saved[0] < 100000


def _small_state(mesh):
  """A TrainState whose every field is hard to get by accident: random params, Adam moments
  after two random-gradient updates, step 5 and random raw key data (no seed's key)."""
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(4, 6)).astype(np.float32),
            "b": rng.normal(size=(6,)).astype(np.float32)}
  tx = optax.adam(0.1)
  opt_state = tx.init(params)
  for _ in range(2):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    _, opt_state = tx.update(grads, opt_state, params)
  state = TrainState(step=np.int32(5), params=params, opt_state=opt_state,
                     rng=rng.integers(0, 2**32, size=2, dtype=np.uint32))
  w_sharding = NamedSharding(mesh, P(None, "fsdp"))
  def place(path, x):
    sharded = jax.tree_util.keystr(path).endswith("['w']")
    return jax.device_put(x, w_sharding if sharded else sharding.replicated(mesh))
  return jax.tree_util.tree_map_with_path(place, state)


def test_checkpoint_round_trip_restores_every_field_and_the_data_position(tmp_path):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2])
  state = _small_state(mesh)
  dataset = grain.MapDataset.range(1000).shuffle(seed=3).batch(4)
  data = iter(dataset)
  for _ in range(5):
    next(data)
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  try:
    checkpointer.save(5, state, data)
    checkpointer.wait()
    expected_batches = [next(data) for _ in range(3)]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    restored_data = iter(dataset)
    restored = checkpointer.restore(5, abstract, restored_data)
  finally:
    checkpointer.close()
  assert int(restored.step) == 5
  _assert_trees_equal(restored.params, state.params, "params")
  _assert_trees_equal(restored.opt_state, state.opt_state, "opt_state")
  np.testing.assert_array_equal(restored.rng, state.rng)
  assert restored.params["w"].sharding == state.params["w"].sharding
  for expected in expected_batches:
    np.testing.assert_array_equal(next(restored_data), expected)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  _without_eval(monkeypatch)
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
