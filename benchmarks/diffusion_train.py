"""Diffusion train-step throughput: mmjax's UNet and DiT against PyTorch peers, side by side.

The denoisers are configs/t2i_shapeworld.py's (`DENOISERS["unet"]`, `DENOISERS["dit"]`) on
32x32x3 images with a text context of 24 tokens x 128 (`context_dim=128`, the text tower's
width there). The peers (benchmarks/_torch_diffusion_peers.py) are diffusers'
`UNet2DConditionModel` with the same channels, blocks and heads, and a PyTorch transcription
of mmjax's DiT (the same parameter count, exactly). A step is forward + MSE to the noise +
backward + AdamW (the config's b1/b2/eps/weight decay, constant lr 1e-3, no clipping), float32
on CPU, the same batch on both sides (noisy images, times, context, key mask). The mmjax step
is one `jax.jit` with donated (params, optimizer state).

The JAX side runs in this process (JAX's default threads); the PyTorch side in a worker
process started with `--torch-python` (`torch.set_num_threads(--torch-threads)`). Timed steps
alternate between the two (jax, torch, torch, jax, ...) so load changes hit both; each side
reports the median of its per-step times. The results go to `--out` (JSON); nothing is written
to benchmarks/README.md.

Run it on an idle machine: with 2 OpenMP threads on 2 busy cores, libgomp's default spin-wait
makes every small torch op wait for a descheduled peer thread (measured at load ~6: a DiT step
at batch 8 took 1.6-9.4 s by default, 0.5 s with OMP_WAIT_POLICY=PASSIVE, 0.3 s with one
thread), while XLA's fused step loses far less. The worker inherits the environment, so
`OMP_WAIT_POLICY=PASSIVE python benchmarks/diffusion_train.py ...` applies to the torch side;
the JSON records the policy and the load averages before and after.

  python benchmarks/diffusion_train.py --torch-python VENV/bin/python  # VENV: torch, diffusers
  python benchmarks/diffusion_train.py --torch-python PY --models dit --steps 2 --warmup 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._report import machine_line  # noqa: E402
from mmjax.nn.dit import DiT  # noqa: E402
from mmjax.nn.unet import UNet  # noqa: E402
from mmjax.train.config import load_config  # noqa: E402

IMAGE_SIZE, CHANNELS, CONTEXT_LENGTH, CONTEXT_DIM = 32, 3, 24, 128
# configs/t2i_shapeworld.py's AdamW at its peak learning rate, held constant (no warm-up or
# decay schedule), as torch.optim.AdamW runs it.
OPTIM = dict(learning_rate=1e-3, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01)
MODELS = {"unet": UNet, "dit": DiT}
PEERS = {"unet": "diffusers UNet2DConditionModel", "dit": "PyTorch DiT (transcription)"}
PEERS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "_torch_diffusion_peers.py")


def denoiser_config(name: str) -> dict:
  """configs/t2i_shapeworld.py's denoiser `name` as module fields (context_dim set)."""
  config = load_config(os.path.join(ROOT, "configs", f"t2i_shapeworld.py:{name}"))
  fields = dict(config.model.denoiser)
  fields.pop("name")
  fields["attention_impl"] = config.model.attention_impl
  fields["context_dim"] = CONTEXT_DIM
  return fields


def synthetic_batch(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Noisy images `x_t [B, 32, 32, 3]`, their noise `target`, times `t [B]`, text `context
  [B, 24, 128]` and `context_mask [B, 24]` (1..24 real tokens, then padding)."""
  rng = np.random.default_rng(seed)
  shape = (batch, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
  x0 = rng.uniform(-1, 1, size=shape)
  noise = rng.normal(size=shape)
  t = rng.uniform(0.02, 0.98, size=batch)
  alpha_bar = np.cos(t * np.pi / 2)[:, None, None, None] ** 2  # a cosine schedule
  x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * noise
  lengths = rng.integers(1, CONTEXT_LENGTH + 1, size=batch)
  return {"x_t": x_t.astype(np.float32), "target": noise.astype(np.float32),
          "t": t.astype(np.float32),
          "context": rng.normal(size=(batch, CONTEXT_LENGTH, CONTEXT_DIM)).astype(np.float32),
          "context_mask": np.arange(CONTEXT_LENGTH)[None] < lengths[:, None]}


class MmjaxSide:
  """One mmjax denoiser, optax AdamW, and a jitted step with donated (params, opt state)."""

  def __init__(self, name: str, fields: dict, batch: dict[str, np.ndarray]):
    self.model = MODELS[name](**fields)
    self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
    tx = optax.adamw(OPTIM["learning_rate"], b1=OPTIM["b1"], b2=OPTIM["b2"], eps=OPTIM["eps"],
                     weight_decay=OPTIM["weight_decay"])
    b = self.batch
    params = jax.jit(self.model.init)(jax.random.key(0), b["x_t"][:1], b["t"][:1],
                                      b["context"][:1], b["context_mask"][:1])["params"]
    self.num_params = sum(x.size for x in jax.tree.leaves(params))

    def loss_fn(params, batch):
      pred = self.model.apply({"params": params}, batch["x_t"], batch["t"],
                              context=batch["context"], context_mask=batch["context_mask"])
      return jnp.mean((pred - batch["target"]) ** 2)

    def train_step(state, batch):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    self.state = (params, tx.init(params))
    start = time.perf_counter()
    self.step_fn = jax.jit(train_step, donate_argnums=0).lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.loss = float("nan")

  def step(self) -> float:
    """One train step; returns its seconds (waits for the new state and the loss)."""
    start = time.perf_counter()
    self.state, loss = self.step_fn(self.state, self.batch)
    jax.block_until_ready((self.state, loss))
    elapsed = time.perf_counter() - start
    self.loss = float(loss)
    return elapsed


class TorchWorker:
  """The PyTorch peers in a child process (`_torch_diffusion_peers.py`), one JSON line a call."""

  def __init__(self, python: str, batch_file: str, threads: int):
    if shutil.which(python) is None:
      raise ValueError(f"--torch-python={python!r} is not an executable Python")
    self.python = python
    self.process = subprocess.Popen(
        [python, PEERS_SCRIPT, "--batch-file", batch_file, "--threads", str(threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.versions = self._answer("start")

  def ask(self, **command) -> dict:
    self.process.stdin.write(json.dumps(command) + "\n")
    self.process.stdin.flush()
    return self._answer(f"{command['cmd']} {command.get('model', '')}")

  def _answer(self, what: str) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker ({self.python} {PEERS_SCRIPT}) exited at "
                         f"{what.strip()}; its error is above (does --torch-python have torch "
                         "and diffusers?)")
    return json.loads(line)

  def close(self):
    if self.process.poll() is None:
      self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.process.stdin.close()
      self.process.wait(timeout=60)


def load_average() -> str:
  """`uptime`'s output (the load averages), or /proc/loadavg without it."""
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    with open("/proc/loadavg") as f:
      return "loadavg " + f.read().strip()


def measure(name: str, batch: dict[str, np.ndarray], worker: TorchWorker,
            args) -> list[dict]:
  """Builds both sides of model `name`, warms them up, times interleaved steps: two rows."""
  fields = denoiser_config(name)
  mm = MmjaxSide(name, fields, batch)
  peer_config = dict(fields, image_size=IMAGE_SIZE, in_channels=CHANNELS, optim=OPTIM)
  built = worker.ask(cmd="build", model=name, config=peer_config)
  print(f"{name}: params mmjax {mm.num_params:,}, {PEERS[name]} {built['params']:,} "
        f"({built['params'] / mm.num_params - 1:+.2%}); mmjax compile {mm.compile_s:.1f} s",
        flush=True)
  for _ in range(args.warmup):
    mm.step()
  worker.ask(cmd="steps", model=name, n=args.warmup)
  seconds = {"mmjax": [], "pytorch": []}
  torch_loss = float("nan")
  for i in range(args.steps):
    for side in (("mmjax", "pytorch") if i % 2 == 0 else ("pytorch", "mmjax")):
      if side == "mmjax":
        seconds["mmjax"].append(mm.step())
      else:
        answer = worker.ask(cmd="steps", model=name, n=1)
        seconds["pytorch"].append(answer["seconds"][0])
        torch_loss = answer["loss"]
  medians = {side: statistics.median(s) for side, s in seconds.items()}
  ratio = medians["pytorch"] / medians["mmjax"]  # examples/s mmjax over examples/s PyTorch
  rows = []
  for side, implementation, params, loss in (
      ("mmjax", f"mmjax {MODELS[name].__name__} (jit)", mm.num_params, mm.loss),
      ("pytorch", f"{PEERS[name]} (eager)", built["params"], torch_loss)):
    rows.append(dict(implementation=implementation, model=name, batch=args.batch,
                     params=params, median_step_s=medians[side],
                     examples_per_s=args.batch / medians[side], ratio_mmjax_over_pytorch=ratio,
                     step_seconds=seconds[side], last_loss=loss,
                     compile_s=mm.compile_s if side == "mmjax" else None))
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| model | implementation | params | median step (s) | examples/s | mmjax/PyTorch |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['implementation']} | {r['params']:,} | "
                 f"{r['median_step_s']:.3f} | {r['examples_per_s']:.1f} | "
                 f"{r['ratio_mmjax_over_pytorch']:.2f}x |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
  parser.add_argument("--models", default="unet,dit", help="comma-separated: unet, dit")
  parser.add_argument("--torch-python", default=sys.executable,
                      help="Python with torch and diffusers for the PyTorch side")
  parser.add_argument("--torch-threads", type=int, default=2)
  parser.add_argument("--out", default="benchmarks/results/diffusion_train.json")
  args = parser.parse_args()
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(models) - set(MODELS))
  if unknown or not models:
    parser.error(f"--models takes names from {sorted(MODELS)}, got {args.models!r}")
  if args.batch < 1 or args.steps < 1 or args.warmup < 0:
    parser.error("--batch and --steps must be >= 1 and --warmup >= 0")

  load_before = load_average()
  print(f"load before: {load_before}", flush=True)
  batch = synthetic_batch(args.batch)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    batch_file = os.path.join(tmp, "batch.npz")
    np.savez(batch_file, **batch)
    worker = TorchWorker(args.torch_python, batch_file, args.torch_threads)
    try:
      for name in models:
        rows += measure(name, batch, worker, args)
    finally:
      worker.close()
  torch_versions = worker.versions
  load_after = load_average()

  print(table(rows))
  print(f"load after: {load_after}")
  report = dict(
      machine=machine_line(), jax=jax.__version__, jax_platform=jax.devices()[0].platform,
      torch=torch_versions.get("torch"), diffusers=torch_versions.get("diffusers"),
      torch_threads=torch_versions.get("torch_threads"),
      omp_wait_policy=torch_versions.get("omp_wait_policy"),
      xla_flags=os.environ.get("XLA_FLAGS", ""), batch=args.batch, steps=args.steps,
      warmup=args.warmup, image=[IMAGE_SIZE, IMAGE_SIZE, CHANNELS],
      context=[CONTEXT_LENGTH, CONTEXT_DIM], optim=OPTIM, load_before=load_before,
      load_after=load_after, rows=rows)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
