"""Train-step time of `configs/ofa_shapeworld.py` with its vision tower frozen, against training
everything and against freezing by the optimizer alone.

  python benchmarks/frozen_tower_step.py [--steps 20] [--trials 3] [--no-write] [--allow-loaded]

Three train steps of the one trainer (`make_train_step`), jitted with donated state:
  all trains       optim.trainable=() (everything).
  frozen, skipped  optim.trainable=("encoder", "decoder"): the tower's gradients are zeroed
                   before the optimizer and grad_norm, so XLA does not compute them.
  frozen, computed the same optimizer (`multi_transform` + `set_to_zero` on the tower), but
                   the step keeps the raw gradients for grad_norm, as the trainer did before:
                   the tower's whole backward pass still runs.
Each trial times `--steps` steps on the same batch, after one warm-up step; the table gives the
median (min-max) images per second over `--trials` trials, the trials alternating.
"""
import argparse
import pathlib
import statistics
import sys
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "configs"), str(ROOT / "benchmarks")]

import ofa_shapeworld  # noqa: E402
from _report import LoadWatch, add_load_argument, machine_line, write_section  # noqa: E402
from mmjax.train import sharding  # noqa: E402
from mmjax.train.optim import make_optimizer  # noqa: E402
from mmjax.train.state import build_state  # noqa: E402
from mmjax.train.tasks.multitask import MultiTask  # noqa: E402
from mmjax.train.trainer import make_train_step  # noqa: E402

FROZEN = ("encoder", "decoder")  # everything but "vision_encoder"
SIDES = {"all trains": ((), ()), "frozen, skipped": (FROZEN, FROZEN),
         "frozen, computed": (FROZEN, ())}  # side -> (optimizer's patterns, step's patterns)


def build(side: str):
  """(step function, state, batch) of one side on all local devices."""
  optimizer_patterns, step_patterns = SIDES[side]
  config = ofa_shapeworld.get_config()
  config.optim.trainable = optimizer_patterns
  task = MultiTask(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  task.set_mesh(mesh)
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  init_fn, _, state_shardings = build_state(task, tx, config, mesh)
  step = jax.jit(make_train_step(task, tx, schedule, step_patterns),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  batch = sharding.host_batch_to_global(next(task.train_batches(0, 1)), mesh)
  return step, init_fn(), batch, config.batch_size


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--trials", type=int, default=3)
  parser.add_argument("--no-write", action="store_true")
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  built = {side: list(build(side)) for side in SIDES}
  rates = {side: [] for side in SIDES}
  for side, entry in built.items():  # warm-up (compiles)
    entry[1], metrics = entry[0](entry[1], entry[2])
    jax.block_until_ready(metrics)
  for _ in range(args.trials):
    for side, entry in built.items():
      step, state, batch, images = entry
      began = time.perf_counter()
      for _ in range(args.steps):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      rates[side].append(args.steps * images / (time.perf_counter() - began))
      entry[1] = state
  base = statistics.median(rates["all trains"])
  lines = [
      f"`configs/ofa_shapeworld.py` train steps (batch {built['all trains'][3]} images x 3 "
      f"instruction rows, float32), {args.steps} steps per trial after one warm-up step, "
      f"{args.trials} alternating trials. Command: `python benchmarks/frozen_tower_step.py`.",
      "", f"Machine: {machine_line()}; jax {jax.__version__} ({jax.default_backend()}).", "",
      "| side | images/s, median (min-max) | / all trains |", "|---|---|---|"]
  for side, values in rates.items():
    median = statistics.median(values)
    lines.append(f"| {side} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) | "
                 f"{median / base:.2f}x |")
  markdown = "\n".join(lines)
  print(markdown)
  if not args.no_write:
    write_section("frozen_tower_step", markdown, load, args.allow_loaded)


if __name__ == "__main__":
  main()
