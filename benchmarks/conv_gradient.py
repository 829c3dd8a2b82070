"""Conv forward and gradient wall time: `mmjax.nn.conv` "xla" vs "fast", per shape and in a UNet.

For each conv case: the jitted forward `conv2d(x, kernel)` and the jitted
`value_and_grad(sum(conv2d(x, kernel) * cotangent), (x, kernel))`, both implementations
interleaved call by call after a warm-up, median over --repeats. Then one whole UNet train step
(UNet(channels=(64, 128), num_res_blocks=2, attention_levels=(1,), context_dim=128), batch 16,
32x32x3, value_and_grad of an MSE w.r.t. the params) built with each implementation (the UNet
reads its convs from `mmjax.nn.unet.conv`, which this script wraps while tracing), with its
compile time. The load average is printed first and stored: the machine is shared, so compare
the two implementations within a run, not across runs.

  python benchmarks/conv_gradient.py [--repeats 10] [--unet-repeats 5] [--dtype bfloat16]
      [--out benchmarks/results/conv_gradient.json] [--skip-unet]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._report import machine_line  # pylint: disable=wrong-import-position
from mmjax.nn import unet as unet_lib  # pylint: disable=wrong-import-position
from mmjax.nn.conv import IMPLEMENTATIONS, conv2d  # pylint: disable=wrong-import-position

# (name, input [B, H, W, Cin], Cout, kernel size, stride)
CASES = (
    ("3x3 64->64 @32", (16, 32, 32, 64), 64, 3, 1),
    ("3x3 128->128 @16", (16, 16, 16, 128), 128, 3, 1),
    ("conv_in 3x3 3->64 @32, B=64", (64, 32, 32, 3), 64, 3, 1),
    ("3x3 stride 2 64->64 @32", (16, 32, 32, 64), 64, 3, 2),
    ("1x1 skip 192->128 @16", (16, 16, 16, 192), 128, 1, 1),
)
UNET_CONFIG = dict(channels=(64, 128), num_res_blocks=2, attention_levels=(1,), context_dim=128)
UNET_BATCH, UNET_SIZE, UNET_CHANNELS, UNET_CONTEXT_LENGTH = 16, 32, 3, 8


def load_average() -> list[float]:
  return [round(v, 2) for v in os.getloadavg()]


def interleaved_medians(fns: dict, args: dict, repeats: int) -> dict:
  """Median wall seconds per call of each `fns[name](*args[name])`, calls interleaved."""
  for name, fn in fns.items():  # warm-up (compiled already; first calls allocate)
    jax.block_until_ready(fn(*args[name]))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[name]))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def conv_case(shape, out_channels, kernel_size, strides, dtype, repeats) -> dict:
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], shape, dtype)
  kernel = (jax.random.normal(keys[1], (kernel_size, kernel_size, shape[-1], out_channels))
            / np.sqrt(kernel_size * kernel_size * shape[-1])).astype(dtype)
  out_shape = (shape[0], -(-shape[1] // strides), -(-shape[2] // strides), out_channels)
  cotangent = jax.random.normal(keys[2], out_shape, dtype)
  fns, args = {}, {}
  for impl in IMPLEMENTATIONS:
    forward = functools.partial(conv2d, strides=strides, implementation=impl)
    loss = lambda x_, k_, f=forward: jnp.sum((f(x_, k_) * cotangent).astype(jnp.float32))
    fns[f"{impl} fwd"] = jax.jit(forward)
    fns[f"{impl} grad"] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    args[f"{impl} fwd"] = args[f"{impl} grad"] = (x, kernel)
  medians = interleaved_medians(fns, args, repeats)
  return {impl: {"fwd_ms": 1e3 * medians[f"{impl} fwd"], "grad_ms": 1e3 * medians[f"{impl} grad"]}
          for impl in IMPLEMENTATIONS}


@contextlib.contextmanager
def unet_convs(implementation: str):
  """Makes every `conv(...)` the UNet builds use `implementation` while tracing."""
  original = unet_lib.conv
  unet_lib.conv = functools.partial(original, implementation=implementation)
  try:
    yield
  finally:
    unet_lib.conv = original


def unet_steps(dtype, repeats) -> dict:
  model = unet_lib.UNet(**UNET_CONFIG, dtype=dtype)
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (UNET_BATCH, UNET_SIZE, UNET_SIZE, UNET_CHANNELS))
  t = jax.random.uniform(keys[1], (UNET_BATCH,))
  context = jax.random.normal(keys[2], (UNET_BATCH, UNET_CONTEXT_LENGTH,
                                        UNET_CONFIG["context_dim"]))
  target = jax.random.normal(keys[3], x.shape)
  params = jax.jit(model.init)(keys[4], x, t, context)["params"]

  def loss_fn(p):
    pred = model.apply({"params": p}, x, t, context)
    return jnp.mean((pred - target) ** 2)

  steps, compile_s = {}, {}
  for impl in IMPLEMENTATIONS:
    with unet_convs(impl):
      start = time.perf_counter()
      steps[impl] = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile()
      compile_s[impl] = time.perf_counter() - start
  medians = interleaved_medians(steps, {impl: (params,) for impl in IMPLEMENTATIONS}, repeats)
  losses = {impl: float(steps[impl](params)[0]) for impl in IMPLEMENTATIONS}
  return {impl: {"step_ms": 1e3 * medians[impl], "compile_s": compile_s[impl],
                 "loss": losses[impl]} for impl in IMPLEMENTATIONS}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--unet-repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--skip-unet", action="store_true")
  parser.add_argument("--out", default="benchmarks/results/conv_gradient.json")
  args = parser.parse_args()
  uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  print(f"uptime: {uptime}", flush=True)
  dtype = jnp.dtype(args.dtype)
  result = {"machine": machine_line(), "jax": jax.__version__, "dtype": args.dtype,
            "repeats": args.repeats, "uptime_start": uptime, "cases": []}
  print("| case | xla fwd (ms) | fast fwd (ms) | xla grad (ms) | fast grad (ms) | grad xla/fast "
        "| load |")
  print("|---|---|---|---|---|---|---|")
  for name, shape, out_channels, kernel_size, strides in CASES:
    times = conv_case(shape, out_channels, kernel_size, strides, dtype, args.repeats)
    load = load_average()
    result["cases"].append({"name": name, "input": shape, "out_channels": out_channels,
                            "kernel_size": kernel_size, "strides": strides, **times,
                            "load": load})
    xla, fast = times["xla"], times["fast"]
    print(f"| {name} | {xla['fwd_ms']:.1f} | {fast['fwd_ms']:.1f} | {xla['grad_ms']:.1f} | "
          f"{fast['grad_ms']:.1f} | {xla['grad_ms'] / fast['grad_ms']:.2f}x | {load[0]:.1f} |",
          flush=True)
  if not args.skip_unet:
    unet = unet_steps(dtype, args.unet_repeats)
    unet["load"] = load_average()
    result["unet_train_step"] = unet
    for impl in IMPLEMENTATIONS:
      print(f"UNet train step ({impl}): {unet[impl]['step_ms']:.0f} ms/step median of "
            f"{args.unet_repeats}, compile {unet[impl]['compile_s']:.1f} s, loss "
            f"{unet[impl]['loss']:.6f}")
    print(f"UNet step xla/fast: {unet['xla']['step_ms'] / unet['fast']['step_ms']:.2f}x "
          f"(load {unet['load'][0]:.1f})")
  result["load_end"] = load_average()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}; load at end {result['load_end']}")


if __name__ == "__main__":
  main()
