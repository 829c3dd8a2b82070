"""Where the CLIP train step's time goes, on both sides, and the GEMM floor under it.

The step and its shapes are `clip_train_throughput.py`'s (mmjax's trainer step against
open_clip + torch AdamW, batch 128, float32). Three measurements, in one run:

  * mmjax: `jax.profiler` traces a few steps; every XLA:CPU thunk is mapped to the op it
    came from through the compiled HLO's `op_name` metadata and binned by category. XLA runs
    independent thunks concurrently on its 2 threads, so the summed op time exceeds the
    step's wall time; compare the shares, not the milliseconds, with the torch side.
  * open_clip: `torch.profiler` over the same number of steps, self CPU time per aten op
    (the main thread's time inside each op, its intra-op threads included), same bins.
  * The GEMM floor: exactly the step's dense-layer matrix products (forward, input gradient
    and weight gradient of every qkv/out/fc1/fc2 layer of both towers, at the step's shapes),
    through each side's own autodiff (one jitted `jax.value_and_grad`; torch autograd),
    median of several alternating calls.

  python benchmarks/clip_step_profile.py [--steps 3] [--no-write] [--allow-loaded]
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_train_throughput as clip_bench  # noqa: E402  pylint: disable=wrong-import-position

CATEGORIES = ("dense-layer GEMMs", "attention (scores, softmax, values)", "layer norm", "GELU",
              "layout copies / transposes", "optimizer (AdamW)", "other")


def jax_category(fusion: str, op_name: str) -> str:
  """The bin of one XLA thunk from its name and its HLO `op_name`."""
  leaf = op_name.lower()
  if "/self_attn/" in leaf and re.search(r"(qkv|out|query|kv)/dot_general", leaf) is None:
    return "attention (scores, softmax, values)"
  if re.search(r"(qkv|out|fc1|fc2|patch_embed|proj|projection)\w*/dot_general", leaf) or (
      "dot_general" in leaf and "/self_attn/" not in leaf):
    return "dense-layer GEMMs"
  if re.search(r"/ln_\w+/|layer_?norm|/ln_final|/ln_post|/ln_pre", leaf):
    return "layer norm"
  if "/mlp/" in leaf:
    return "GELU"  # the MLP's ops other than its two GEMMs: the activation and its gradient
  if fusion.startswith(("copy", "transpose")):
    return "layout copies / transposes"
  if "clip" not in leaf:
    return "optimizer (AdamW)" if "loss" not in leaf else "other"
  return "other"


def torch_category(name: str) -> str:
  """The bin of one aten op."""
  if name in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul"):
    return "dense-layer GEMMs"
  if "scaled_dot_product" in name or "flash_attention" in name or name in (
      "aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data"):
    return "attention (scores, softmax, values)"
  if "layer_norm" in name:
    return "layer norm"
  if "gelu" in name:
    return "GELU"
  if name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy",
              "aten::permute", "aten::transpose"):
    return "layout copies / transposes"
  if "_foreach" in name or "Optimizer" in name or name in ("aten::addcdiv_", "aten::lerp_"):
    return "optimizer (AdamW)"
  return "other"


def profile_mmjax(side, steps: int) -> tuple[dict[str, float], list[tuple[str, float]], float]:
  """(ms/step per category, top ops, wall s/step) from a jax.profiler trace of `steps` steps."""
  hlo = side.compiled.as_text()
  op_names = {}
  for line in hlo.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"", line)
    if match:
      op_names.setdefault(match.group(1), match.group(2))
  wall = side.run(steps) / steps
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    side.run(steps)
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  bins, ops = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X" or name not in op_names:
      continue
    ms = event.get("dur", 0) / 1000 / steps
    bins[jax_category(name, op_names[name])] += ms
    short = re.sub(r"block_\d+", "block_N", "/".join(op_names[name].split("/")[-3:]))
    ops[f"{name.rsplit('.', 1)[0]}: {short}"] += ms
  return dict(bins), ops.most_common(8), wall


def profile_open_clip(side, steps: int) -> tuple[dict[str, float], list[tuple[str, float]], float]:
  """(ms/step per category, top ops, wall s/step) from torch.profiler self CPU times."""
  import torch  # pylint: disable=import-outside-toplevel
  wall = side.run(steps) / steps
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    side.run(steps)
  bins, ops = collections.Counter(), collections.Counter()
  for event in prof.key_averages():
    ms = event.self_cpu_time_total / 1000 / steps
    bins[torch_category(event.key)] += ms
    ops[event.key] += ms
  return dict(bins), ops.most_common(8), wall


def dense_gemm_shapes() -> list[tuple[int, int, int]]:
  """(M, K, N) of every dense layer of both towers: M tokens x K inputs -> N outputs."""
  width, mlp = clip_bench.WIDTH, int(clip_bench.WIDTH * clip_bench.MLP_RATIO)
  image_tokens = clip_bench.BATCH * ((clip_bench.IMAGE_SIZE // clip_bench.PATCH) ** 2 + 1)
  text_tokens = clip_bench.BATCH * clip_bench.CONTEXT
  layer = [(width, 3 * width), (width, width), (width, mlp), (mlp, width)]
  return [(m, k, n) for m in (image_tokens, text_tokens) for _ in range(clip_bench.LAYERS)
          for k, n in layer]


def gemm_floor(repeats: int) -> dict:
  """Seconds of the step's dense-layer products on both sides, each side's own autodiff.

  Loss = sum_i sum(X_i W_i * G_i) over independent layers at the step's shapes, so its
  gradients w.r.t. every X_i and W_i are exactly the dense layers' backward products (dY = G_i
  is a constant); each framework picks its own operand order and layouts for them.
  """
  import torch  # pylint: disable=import-outside-toplevel
  shapes = dense_gemm_shapes()
  rng = np.random.default_rng(0)
  arrays = [(rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32),
             rng.standard_normal((m, n), np.float32)) for m, k, n in shapes]

  def jax_loss(xs, ws, gs):
    return sum(jnp.vdot(x @ w, g) for x, w, g in zip(xs, ws, gs))

  # value_and_grad: the loss needs the forward products (the gradients alone would not).
  jax_step = jax.jit(jax.value_and_grad(jax_loss, argnums=(0, 1)))
  xs, ws, gs = (jax.device_put([a[i] for a in arrays]) for i in range(3))
  jax.block_until_ready(jax_step(xs, ws, gs))
  t_xs = [torch.from_numpy(a[0]).requires_grad_() for a in arrays]
  t_ws = [torch.from_numpy(a[1]).requires_grad_() for a in arrays]
  t_gs = [torch.from_numpy(a[2]) for a in arrays]

  def torch_step():
    for tensor in t_xs + t_ws:
      tensor.grad = None
    loss = sum(torch.sum((x @ w) * g) for x, w, g in zip(t_xs, t_ws, t_gs))
    loss.backward()

  torch_step()
  times = {"mmjax": [], "torch": []}
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(jax_step(xs, ws, gs))
    times["mmjax"].append(time.perf_counter() - start)
    start = time.perf_counter()
    torch_step()
    times["torch"].append(time.perf_counter() - start)
  return {"flops": sum(3 * 2 * m * k * n for m, k, n in shapes), "repeats": repeats,
          **{k: statistics.median(v) for k, v in times.items()}}


def table(mm, oc, floor, steps: int, torch_version: str) -> str:
  mm_bins, mm_top, mm_wall = mm
  oc_bins, oc_top, oc_wall = oc
  mm_total, oc_total = sum(mm_bins.values()), sum(oc_bins.values())
  lines = [
      f"The `clip_train_throughput.py` step (batch {clip_bench.BATCH}, float32), {steps} profiled "
      f"steps per side after {steps} untimed ones. mmjax: XLA:CPU thunk times from "
      "`jax.profiler`, binned through the compiled HLO's `op_name` (XLA runs independent "
      "thunks concurrently, so their sum exceeds the wall time); open_clip: `torch.profiler` self "
      f"CPU time per aten op (torch {torch_version}, {os.cpu_count()} threads). "
      "Command: `python benchmarks/clip_step_profile.py`.",
      "",
      f"Machine: {clip_bench.machine()}.",
      "",
      f"Step wall time: mmjax {mm_wall * 1e3:.0f} ms, open_clip {oc_wall * 1e3:.0f} ms "
      f"(mmjax / open_clip speed {oc_wall / mm_wall:.2f}x).",
      "",
      "| category | mmjax op time (ms/step) | share | open_clip self CPU (ms/step) | share |",
      "|---|---|---|---|---|",
  ]
  for category in CATEGORIES:
    a, b = mm_bins.get(category, 0.0), oc_bins.get(category, 0.0)
    lines.append(f"| {category} | {a:.0f} | {100 * a / mm_total:.0f}% | {b:.0f} | "
                 f"{100 * b / oc_total:.0f}% |")
  lines.append(f"| total | {mm_total:.0f} | 100% | {oc_total:.0f} | 100% |")
  lines += ["", "Top ops, mmjax (thunk: op_name tail, ms/step): " + "; ".join(
      f"`{name}` {ms:.0f}" for name, ms in mm_top[:6]) + ".",
            "", "Top ops, open_clip (self CPU ms/step): " + "; ".join(
                f"`{name}` {ms:.0f}" for name, ms in oc_top[:6]) + "."]
  gflop = floor["flops"] / 1e9
  lines += [
      "",
      f"GEMM floor: the step's {len(dense_gemm_shapes())} dense layers' forward, input-gradient "
      f"and weight-gradient products ({gflop:.0f} GFLOP) through each side's autodiff (one "
      f"jitted `jax.value_and_grad`; torch autograd), median of {floor['repeats']} alternating calls: "
      f"XLA:CPU {floor['mmjax']:.2f} s ({gflop / floor['mmjax']:.0f} GFLOP/s), torch "
      f"{floor['torch']:.2f} s ({gflop / floor['torch']:.0f} GFLOP/s): **mmjax / torch = "
      f"{floor['torch'] / floor['mmjax']:.2f}x on the GEMMs alone**.",
  ]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--gemm-repeats", type=int, default=5)
  parser.add_argument("--no-write", action="store_true", help="print only, keep README.md")
  from _report import LoadWatch, add_load_argument  # pylint: disable=import-outside-toplevel
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  batch = clip_bench.synthetic_batch()
  mm_side = clip_bench.MmjaxSide(batch)
  oc_side = clip_bench.OpenClipSide(batch, os.cpu_count())
  mm = profile_mmjax(mm_side, args.steps)
  oc = profile_open_clip(oc_side, args.steps)
  floor = gemm_floor(args.gemm_repeats)
  markdown = table(mm, oc, floor, args.steps, oc_side.torch.__version__)
  print(markdown)
  print(load.line())
  if not args.no_write:
    from _report import write_section  # pylint: disable=import-outside-toplevel
    write_section("clip_step_profile", markdown, load, args.allow_loaded)


if __name__ == "__main__":
  main()
