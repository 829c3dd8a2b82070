"""The one mmjax training loop: sharded init, jitted step, eval, checkpoints, resume.

Works unchanged on one CPU, simulated CPU devices, one GPU and multi-host runs (call
`jax.distributed.initialize()` before `train`; each host feeds its slice of the batch).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm import tqdm

from mmjax.errors import CheckpointSaveError, RunFault
from mmjax.train import sharding, workdir as workdir_lib
from mmjax.train.checkpoint import Checkpointer, warn
from mmjax.train.config import save_run_config
from mmjax.train.logging import MetricWriter
from mmjax.train.optim import count_params, make_optimizer, trainable_mask
from mmjax.train.restore import RestoredRun, restore_params  # noqa: F401 (re-exported)
from mmjax.train.state import TrainState, build_state  # noqa: F401 (re-exported)
from mmjax.train.tasks import get_task_class
from mmjax.train.warm_start import active_sources, warm_start


class NonFiniteLossError(RunFault, FloatingPointError):
  """The loss became NaN/inf; the last good checkpoint is kept on disk."""


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: final step, last eval metrics, whether it stopped on SIGTERM."""
  step: int
  eval_metrics: dict[str, float]
  preempted: bool
  state: Any


class _StopFlag:
  """Turns SIGTERM into a flag the loop polls, so it can checkpoint before exiting."""

  def __init__(self):
    self.stop = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, no preemption support.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.stop = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def validate_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Fails early on settings that cannot work on this mesh / host count."""
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the data-parallel size "
                     f"{dp} (mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size={config.batch_size} is not divisible by the number of hosts "
                     f"{jax.process_count()}")
  if config.total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {config.total_steps}")


def make_train_step(task, tx, schedule, trainable=()):
  """`(state, batch) -> (state, metrics)`; metrics are replicated scalars.

  With `trainable` patterns (`optim.trainable`), the frozen leaves' gradients are replaced by
  zeros before the optimizer and the logged grad_norm see them: nothing reads the real ones,
  so XLA drops their computation (a frozen vision tower under the rest costs no backward pass).
  """
  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, metrics), grads = task.loss_and_grad(state.params, batch, rng)
    if trainable:
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads,
                           trainable_mask(grads, trainable))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return train_step


def _check_finite(value: float, step: int, checkpointer: Checkpointer) -> None:
  if not math.isfinite(value):
    last = checkpointer.latest_step()
    kept = f"last good checkpoint: step {last}" if last is not None else "no checkpoint was saved"
    raise NonFiniteLossError(f"loss is {value} at step {step}; stopping ({kept} in "
                             f"{checkpointer.directory})")


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          devices=None, progress: bool = True) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its newest checkpoint that restores.

  Writes `<workdir>/config.json` (the config warm start and `load_run_config` read back).
  Holds `<workdir>/train.lock` while it runs (WorkdirInUseError if another live run holds it)
  and checks the workdir writable before step 0. A checkpoint that does not restore is
  renamed aside (see `checkpoint.Checkpointer.restore_latest`); a failed save or metrics
  write stops the run with a RunFault naming the path, keeping the last good checkpoint.

  Each train.jsonl row has `examples_per_sec` (since the previous row) and `wall_s`: seconds
  since this call began (setup and compilation included; a resumed run counts from 0 again).
  """
  began = time.perf_counter()
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
  validate_config(config, mesh)
  task = get_task_class(config.task)(config)
  task.set_mesh(mesh)
  make_data_iter = lambda: task.train_batches(jax.process_index(), jax.process_count())
  data_iter = make_data_iter()  # Bad data settings fail here, before the workdir is touched.
  with workdir_lib.hold(workdir, enabled=is_main) as lock:
    workdir_lib.check_writable(workdir / "checkpoints")
    if is_main:  # Under the lock: a second run must not overwrite the holder's config.
      save_run_config(config, workdir)
    return _train_in(config, workdir, mesh, task, data_iter, make_data_iter, lock, began,
                     progress)


def _data_counts(data_iter) -> dict[str, int]:
  """The pipeline's bad-example counts (`data.on_bad_example="skip"`), else nothing."""
  bad_examples = getattr(data_iter, "bad_examples", None)
  return bad_examples.counts() if bad_examples is not None else {}


def _restore_or_init(config, checkpointer, abstract_state, init_fn, data_iter, make_data_iter,
                     mesh, state_shardings, is_main):
  """(start step, state, data iterator): the newest good checkpoint, else a fresh (or warm
  started) state."""
  had_checkpoints = bool(checkpointer.steps())
  found = checkpointer.restore_latest(abstract_state, data_iter, set_aside=True,
                                      warn=warn if is_main else (lambda message: None))
  if found is not None:
    start, state = found
    if is_main:
      print(f"Resumed from {checkpointer.directory / str(start)}")
    return start, state, data_iter
  if had_checkpoints:
    if is_main:
      warn(f"no checkpoint in {checkpointer.directory} restores: training from step 0")
    data_iter = make_data_iter()  # A failed restore may have moved the iterator.
  state = init_fn()
  init_from = config.get("init_from")
  if active_sources(init_from):
    params, lines = warm_start(state.params, init_from, mesh, state_shardings.params)
    state = state.replace(params=params)
    if is_main:
      print("\n".join(lines))
  return 0, state, data_iter


def _train_in(config, workdir, mesh, task, data_iter, make_data_iter, lock, began,
              progress) -> TrainResult:
  is_main = jax.process_index() == 0
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  init_fn, abstract_state, state_shardings = build_state(task, tx, config, mesh)
  if is_main and config.optim.get("trainable"):
    trained, total = count_params(abstract_state.params, config.optim.trainable)
    print(f"trainable params: {trained:,} of {total:,} "
          f"(optim.trainable={tuple(config.optim.trainable)})")

  batch_shard = sharding.batch_sharding(mesh)
  trainable = tuple(config.optim.get("trainable") or ())
  train_step = jax.jit(make_train_step(task, tx, schedule, trainable),
                       in_shardings=(state_shardings, batch_shard),
                       out_shardings=(state_shardings, sharding.replicated(mesh)),
                       donate_argnums=0)

  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  try:
    start, state, data_iter = _restore_or_init(
        config, checkpointer, abstract_state, init_fn, data_iter, make_data_iter, mesh,
        state_shardings, is_main)
  except BaseException:
    checkpointer.close()
    raise

  writer = MetricWriter(workdir, enabled=is_main)
  bar = tqdm(total=config.total_steps, initial=start, disable=not (progress and is_main),
             dynamic_ncols=True, desc="train")
  eval_metrics, window_losses, pending = {}, [], None
  last_log_time, last_log_step = time.perf_counter(), start

  def consume(item):
    """Fetches a finished step's metrics (already computed: no pipeline stall) and logs them."""
    nonlocal last_log_time, last_log_step
    done, metrics = item
    host = sharding.to_host(metrics)
    _check_finite(float(host["loss"]), done, checkpointer)
    window_losses.append(float(host["loss"]))
    if lock is not None:
      lock.touch()
    if done % config.log_every == 0:
      now = time.perf_counter()
      rate = config.batch_size * (done - last_log_step) / max(now - last_log_time, 1e-9)
      last_log_time, last_log_step = now, done
      writer.write("train", done, {**host, "examples_per_sec": rate,
                                   "wall_s": round(now - began, 2)})
      bar.set_postfix(loss=f"{host['loss']:.4f}", ex_s=f"{rate:.0f}")

  step, preempted, failed = start, False, True
  try:
    with _StopFlag() as stop:
      while step < config.total_steps:
        host_batch = next(data_iter)
        task.check_batch(host_batch, step)
        state, metrics = train_step(state, sharding.host_batch_to_global(host_batch, mesh))
        step += 1
        # Metrics of step s are read after step s + 1 is dispatched, so the host never waits.
        if pending is not None:
          consume(pending)
        pending = (step, metrics)
        bar.update(1)

        at_end = step == config.total_steps
        do_eval = step % config.eval_every == 0 or at_end
        do_save = step % config.checkpoint_every == 0 or at_end or stop.stop
        if do_eval or do_save:
          consume(pending)  # Never evaluate or save a state whose loss was not finite.
          pending = None
        if do_eval:
          eval_metrics = task.evaluate(state.params, mesh)
          record = {"loss": float(np.mean(window_losses)), **eval_metrics,
                    **_data_counts(data_iter)}
          window_losses.clear()
          writer.write("metrics", step, record)
          if is_main:
            bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items()))
        if do_save:
          checkpointer.save(step, state, data_iter)
        if stop.stop:
          preempted = True
          if is_main:
            bar.write(f"SIGTERM received: saved checkpoint at step {step}, exiting")
          break
    checkpointer.wait()
    if not preempted:
      for path in task.write_artifacts(state.params, mesh, workdir):
        bar.write(f"wrote {path}")
    failed = False
  finally:
    bar.close()
    writer.close()
    try:
      checkpointer.wait()  # Saves in flight finish before the process may exit.
    except CheckpointSaveError:
      if not failed:
        raise  # Otherwise the error already propagating says what went wrong first.
    finally:
      checkpointer.close()
  return TrainResult(step=step, eval_metrics=eval_metrics, preempted=preempted, state=state)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                        *, devices=None) -> dict[str, float]:
  """Evaluates the latest checkpoint in `workdir` with the task's `evaluate`."""
  run = restore_params(config, workdir, devices=devices)
  return {"step": float(run.step), **run.task.evaluate(run.params, run.mesh)}
