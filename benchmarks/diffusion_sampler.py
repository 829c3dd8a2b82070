"""Diffusion sampler overhead: mmjax's one-`lax.scan` sampler vs a Python loop over a jitted step.

The reference is the diffusers-Flax pattern: a scheduler whose jitted `step` looks the
timestep up in a table each call, driven by a Python `for` loop (one dispatch per step).
With a trivial denoiser (so the network costs ~nothing) the difference is sampler overhead;
the small-UNet row (mmjax.nn.unet, text-conditioned, 50 DDIM steps) shows what that overhead
is worth next to a real network. Also counts compilations when the guidance scale and the
prompt embedding change, for the trivial denoiser and for the UNet under both patterns.

  python benchmarks/diffusion_sampler.py [--steps 50] [--repeats 5] [--unet-repeats 3]
"""
import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._report import LoadWatch, add_load_argument, machine_line, write_section  # pylint: disable=wrong-import-position
from mmjax import diffusion  # pylint: disable=wrong-import-position
from mmjax.nn.unet import UNet  # pylint: disable=wrong-import-position

# A small SD-style UNet: 2 levels, attention + cross-attention at the 16x16 level and the middle.
SMALL_UNET = dict(channels=(32, 64), num_res_blocks=1, attention_levels=(1,), num_heads=4,
                  context_dim=32, num_groups=8)
UNET_BATCH, UNET_SIZE, UNET_CHANNELS, PROMPT_LENGTH = 2, 32, 4, 8


def trivial_denoiser(x, t, text=None):
  """eps = 0.1 x (+ a term in the prompt embedding when given)."""
  out = 0.1 * x
  if text is not None:
    out = out + 0.01 * jnp.mean(text, axis=(1, 2)).reshape((-1,) + (1,) * (x.ndim - 1))
  del t
  return out


def mmjax_sampler(schedule, num_steps):
  return jax.jit(lambda x: diffusion.sample(trivial_denoiser, None, x, schedule, sampler="ddim",
                                            num_steps=num_steps))


def reference_loop_sampler(schedule, num_steps, denoise_fn=trivial_denoiser):
  """diffusers-Flax style DDIM: Python loop, jitted step with a timestep look-up.

  `denoise_fn(x, t, *cond)` gets mmjax's continuous time t = (n + 1) / T of index n; the
  returned `run(x, *cond)` dispatches `step(x, i, *cond)` once per step.
  """
  alphas_cumprod = jnp.exp(schedule.log_alpha_bar[1:])  # [T], index n <-> t = (n + 1) / T
  num_train = schedule.num_train_steps
  ratio = num_train // num_steps
  timesteps = jnp.asarray((np.arange(0, num_steps) * ratio).round()[::-1].copy() + ratio - 1)

  @jax.jit
  def step(x, i, *cond):
    t = timesteps[i]
    prev_t = t - ratio
    a_t = alphas_cumprod[t]
    a_prev = jnp.where(prev_t >= 0, alphas_cumprod[jnp.maximum(prev_t, 0)], 1.0)
    eps = denoise_fn(x, jnp.full((x.shape[0],), (t + 1) / num_train, jnp.float32), *cond)
    x0 = (x - jnp.sqrt(1 - a_t) * eps) / jnp.sqrt(a_t)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev) * eps

  def run(x, *cond):
    for i in range(num_steps):
      x = step(x, i, *cond)
    return x

  return run, step


def time_call(fn, x, repeats, *args):
  jax.block_until_ready(fn(x, *args))  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(x, *args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def count_guided_compilations(schedule, num_steps):
  traces = []

  @jax.jit
  def guided(x, scale, text):
    traces.append(1)
    fn = diffusion.classifier_free_guidance(trivial_denoiser, scale,
                                            uncond=dict(text=jnp.zeros(text.shape[1:])))
    return diffusion.sample(fn, None, x, schedule, sampler="dpmpp_2m", num_steps=num_steps,
                            cond=dict(text=text))

  x = jnp.ones((2, 8, 8, 4))
  calls = 0
  for scale in (1.0, 5.0, 7.5):
    for prompt_seed in (0, 1):
      text = jax.random.normal(jax.random.key(prompt_seed), (2, 7, 16))
      jax.block_until_ready(guided(x, jnp.float32(scale), text))
      calls += 1
  return calls, len(traces), guided._cache_size()


def small_unet_params(unet, x, context):
  """Initialised params with noise on every leaf, so the zero-initialised layers are live."""
  params = jax.jit(unet.init)(jax.random.key(0, impl="unsafe_rbg"), x,
                              jnp.zeros((x.shape[0],)), context)["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32),
                      nn.unbox(params))


def unet_rows(schedule, num_steps, repeats):
  """50 DDIM steps of the small UNet: one lax.scan vs a Python loop over a jitted step; and
  compilations of each pattern under CFG when the guidance scale and the prompt change."""
  unet = UNet(**SMALL_UNET)
  shape = (UNET_BATCH, UNET_SIZE, UNET_SIZE, UNET_CHANNELS)
  x = jax.random.normal(jax.random.key(0), shape)
  context = jax.random.normal(jax.random.key(1), (UNET_BATCH, PROMPT_LENGTH,
                                                 SMALL_UNET["context_dim"]))
  params = small_unet_params(unet, x, context)

  def denoise(p):
    return lambda x_t, t, context: unet.apply({"params": p}, x_t, t, context)

  ours = jax.jit(lambda p, x_T, ctx: diffusion.sample(
      denoise(p), None, x_T, schedule, sampler="ddim", num_steps=num_steps,
      cond=dict(context=ctx)))
  ref, _ = reference_loop_sampler(schedule, num_steps,
                                  lambda x_t, t, p, ctx: denoise(p)(x_t, t, ctx))
  np.testing.assert_allclose(ours(params, x, context), ref(x, params, context), rtol=1e-2,
                             atol=1e-2)  # same DDIM trajectory, up to float32 reassociation
  t_ours = time_call(lambda x_T, p, ctx: ours(p, x_T, ctx), x, repeats, params, context)
  t_ref = time_call(ref, x, repeats, params, context)
  row = (f"| DDIM, small UNet {SMALL_UNET['channels']}, cross-attn, x {list(shape)}, "
         f"prompt [{UNET_BATCH}, {PROMPT_LENGTH}, {SMALL_UNET['context_dim']}] | {num_steps} | "
         f"{1e6 * t_ours / num_steps:.0f} | {1e6 * t_ref / num_steps:.0f} | "
         f"{t_ref / t_ours:.2f}x |")

  null = jnp.zeros((PROMPT_LENGTH, SMALL_UNET["context_dim"]))
  traces = {"scan": [], "loop": []}

  @jax.jit
  def guided_scan(p, x_T, scale, ctx):
    traces["scan"].append(1)
    fn = diffusion.classifier_free_guidance(denoise(p), scale, uncond=dict(context=null))
    return diffusion.sample(fn, None, x_T, schedule, sampler="ddim", num_steps=num_steps,
                            cond=dict(context=ctx))

  def guided_eps(x_t, t, p, scale, ctx):
    traces["loop"].append(1)
    fn = diffusion.classifier_free_guidance(denoise(p), scale, uncond=dict(context=null))
    return fn(x_t, t, context=ctx)

  guided_loop, loop_step = reference_loop_sampler(schedule, num_steps, guided_eps)
  calls = 0
  for scale in (1.0, 5.0, 7.5):
    for prompt_seed in (0, 1):
      ctx = jax.random.normal(jax.random.key(prompt_seed), context.shape)
      jax.block_until_ready(guided_scan(params, x, jnp.float32(scale), ctx))
      jax.block_until_ready(guided_loop(x, params, jnp.float32(scale), ctx))
      calls += 1
  note = (f"Small UNet under CFG (DDIM, {num_steps} steps, batch doubled for the unconditional "
          f"call), {calls} (guidance scale, prompt embedding) pairs: `lax.scan` sampler "
          f"{len(traces['scan'])} trace(s), {guided_scan._cache_size()} compiled executable(s); "
          f"Python loop {len(traces['loop'])} trace(s), {loop_step._cache_size()} compiled "
          f"step executable(s) for {calls * num_steps} dispatches.")
  return row, note


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--unet-repeats", type=int, default=3)
  parser.add_argument("--no-write", action="store_true", help="print only")
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  schedule = diffusion.scaled_linear_schedule()
  n = args.steps
  rows = []
  for shape in [(1, 4), (4, 64, 64, 4)]:
    x = jax.random.normal(jax.random.key(0), shape)
    ours = mmjax_sampler(schedule, n)
    ref, _ = reference_loop_sampler(schedule, n)
    np.testing.assert_allclose(ours(x), ref(x), rtol=2e-3, atol=2e-3)  # same DDIM trajectory
    t_ours, t_ref = time_call(ours, x, args.repeats), time_call(ref, x, args.repeats)
    rows.append(f"| DDIM, trivial denoiser, x {list(shape)} | {n} | "
                f"{1e6 * t_ours / n:.1f} | {1e6 * t_ref / n:.1f} | {t_ref / t_ours:.1f}x |")
  calls, traces, cache = count_guided_compilations(schedule, 20)
  unet_row, unet_note = unet_rows(schedule, n, args.unet_repeats)
  rows.append(unet_row)
  table = "\n".join([
      f"Measured on {machine_line()}, jax {jax.__version__}, backend "
      f"{jax.default_backend()} (process nice {os.nice(0)}); median of {args.repeats} runs "
      "after warm-up "
      f"({args.unet_repeats} for the UNet row).",
      "",
      "| case | steps | mmjax `lax.scan` (us/step) | Python loop over jitted step (us/step) "
      "| speed-up |",
      "|---|---|---|---|---|",
      *rows,
      "",
      f"CFG sampler (dpmpp_2m, 20 steps) jitted once and called with {calls} (guidance scale, "
      f"prompt embedding) pairs: {traces} trace(s), {cache} compiled executable(s).",
      "",
      unet_note,
  ])
  print(table)
  print(load.line())
  if not args.no_write:
    write_section("diffusion_sampler", table, load, args.allow_loaded)


if __name__ == "__main__":
  main()
