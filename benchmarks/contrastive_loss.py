"""Contrastive loss + gradient at large batch: plain JAX, blockwise JAX, open_clip (PyTorch).

Each (implementation, N) pair runs in a fresh subprocess, which reports the wall time of one
loss + gradient evaluation (after compilation / a warm-up call) and the process's peak resident
memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the whole process: Python, the JAX or
torch runtime, the inputs and the gradients). D = 512, float32, CPU.

  python benchmarks/contrastive_loss.py                      # the default sizes
  python benchmarks/contrastive_loss.py --sizes 131072 --impls clip_blockwise siglip_blockwise

Results accumulate in --results (JSON) so big sizes can be run separately; every run rewrites
the `contrastive_loss` section of benchmarks/README.md from all results gathered so far.
Implementations whose N x N matrices would not fit (plain JAX and open_clip beyond
--max-dense-n) are not run, so as not to exhaust a shared machine; for plain JAX the table
then shows XLA's compiled memory estimate instead.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

DIM = 512
TEMPERATURE = 0.07
SIGLIP_BIAS = -10.0
IMPLS = ("clip_plain", "clip_plain_optax", "clip_blockwise", "clip_blockwise_products",
         "clip_open_clip", "siglip_plain", "siglip_blockwise", "siglip_open_clip")
DENSE = ("clip_plain", "clip_plain_optax", "clip_open_clip", "siglip_plain", "siglip_open_clip")


def peak_rss_gb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def optax_clip_loss(image_emb, text_emb, temperature):
  """InfoNCE as JAX trainers commonly write it: optax cross-entropy over logits and logits.T.

  The issue's 7.3 GB "plain jitted JAX InfoNCE" anchor is of this form; mmjax's own plain loss
  (clip_loss without block_size) shares one logits matrix between both directions instead.
  """
  import jax.numpy as jnp
  import optax
  logits = image_emb @ text_emb.T / temperature
  labels = jnp.arange(len(logits))
  return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
          + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2


def blockwise_products(block_size: int):
  """The blockwise CLIP loss's four N^2 D products alone, tiled as it tiles them: S = U V^T
  per tile in the log-sum-exp pass, then S, S V and S^T U per tile in the gradient pass. No
  exp, no masking: the time of this function is the floor that the GEMM kernels set for the
  blockwise loss + gradient (each tile's S is summed once in the first pass so that XLA keeps
  its product)."""
  import jax.numpy as jnp
  from mmjax.losses._tiling import tile_scan, to_blocks

  def products(image_emb, text_emb, temperature):
    u_blocks, _ = to_blocks(image_emb, block_size)
    v_blocks, _ = to_blocks(text_emb, block_size)

    def first_pass(u, v, row_x, col_x, row_sum, col_state):
      return row_sum + jnp.einsum("id,jd->ij", u, v).sum(1), col_state

    def second_pass(u, v, row_x, col_x, du, dv):
      s = jnp.einsum("id,jd->ij", u, v)
      return du + jnp.einsum("ij,jd->id", s, v), dv + jnp.einsum("ij,id->jd", s, u)

    nothing = jnp.zeros(len(u_blocks))
    row_sums, _ = tile_scan(first_pass, u_blocks, v_blocks, nothing, nothing,
                            jnp.zeros(u_blocks.shape[:2]), None)
    zeros = jnp.zeros(u_blocks.shape)
    du, dv = tile_scan(second_pass, u_blocks, v_blocks, nothing, nothing, zeros, zeros)
    return row_sums.sum() * temperature, (du, dv, row_sums.sum())

  return products


def run_jax(impl: str, n: int, block_size: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from mmjax.losses import clip_loss, siglip_loss

  @jax.jit
  def make_inputs(rng):
    # Row chunk by row chunk, so that generating the inputs never sets the peak memory.
    chunk = min(n, 4096)

    def unit_rows(key):
      emb = jax.random.normal(key, (chunk, DIM), jnp.float32)
      return emb / jnp.linalg.norm(emb, axis=1, keepdims=True)

    keys = jax.random.split(rng, (2, n // chunk))
    return [jax.lax.map(unit_rows, k).reshape(n, DIM) for k in keys]

  image_emb, text_emb = make_inputs(jax.random.PRNGKey(0))
  block = block_size if impl.endswith("blockwise") else None
  if impl == "clip_plain_optax":
    loss_fn = optax_clip_loss
  elif impl.startswith("clip"):
    loss_fn = lambda u, v, t: clip_loss(u, v, t, block_size=block)
  else:
    loss_fn = lambda u, v, t: siglip_loss(u, v, t, SIGLIP_BIAS, block_size=block)
  if impl == "clip_blockwise_products":
    step = jax.jit(blockwise_products(min(block_size, n)))
  else:
    step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))
  step = step.lower(image_emb, text_emb, TEMPERATURE).compile()
  times = []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    loss, grads = jax.block_until_ready(step(image_emb, text_emb, TEMPERATURE))
    times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    del grads
  wall, cpu = min(times)
  return {"time_s": wall, "cpu_s": cpu, "loss": float(loss), "times_s": [t for t, _ in times]}


def run_open_clip(impl: str, n: int, repeats: int) -> dict:
  import torch
  from open_clip.loss import ClipLoss, SigLipLoss

  gen = torch.Generator().manual_seed(0)
  embs = [torch.nn.functional.normalize(torch.randn(n, DIM, generator=gen), dim=-1)
          for _ in range(2)]
  image_emb, text_emb = (e.requires_grad_() for e in embs)
  logit_scale = torch.tensor(1 / TEMPERATURE, requires_grad=True)
  if impl.startswith("clip"):
    loss_module, extra = ClipLoss(), ()
  else:
    loss_module, extra = SigLipLoss(), (torch.tensor(SIGLIP_BIAS, requires_grad=True),)
  times = []
  for _ in range(repeats + 1):  # the first call is a warm-up
    for t in (image_emb, text_emb, logit_scale, *extra):
      t.grad = None
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = loss_module(image_emb, text_emb, logit_scale, *extra)
    loss.backward()
    times.append((time.perf_counter() - start, time.process_time() - cpu_start))
  wall, cpu = min(times[1:])
  return {"time_s": wall, "cpu_s": cpu, "loss": float(loss), "times_s": [t for t, _ in times[1:]]}


def compiled_estimate_gb(impl: str, n: int) -> float:
  """XLA's compiled temp + argument + output bytes for a config too large to run here."""
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from mmjax.losses import clip_loss, siglip_loss
  if impl == "clip_plain_optax":
    loss_fn = optax_clip_loss
  elif impl.startswith("clip"):
    loss_fn = lambda u, v, t: clip_loss(u, v, t)
  else:
    loss_fn = lambda u, v, t: siglip_loss(u, v, t, SIGLIP_BIAS)
  spec = jax.ShapeDtypeStruct((n, DIM), jnp.float32)
  memory = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2))).lower(
      spec, spec, TEMPERATURE).compile().memory_analysis()
  return (memory.temp_size_in_bytes + memory.argument_size_in_bytes
          + memory.output_size_in_bytes) / 1e9


def worker(args) -> None:
  if args.impl.endswith("open_clip"):
    result = run_open_clip(args.impl, args.n, args.repeats)
  elif args.estimate_only:
    result = {"estimate_gb": compiled_estimate_gb(args.impl, args.n)}
  else:
    result = run_jax(args.impl, args.n, args.block_size, args.repeats)
  result["peak_rss_gb"] = peak_rss_gb()
  print("RESULT " + json.dumps(result), flush=True)


def run_in_subprocess(impl, n, block_size, repeats, timeout, estimate_only=False) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device with all cores, not the tests' 8 fake ones
  cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--n", str(n),
         "--block-size", str(block_size), "--repeats", str(repeats)]
  if estimate_only:
    cmd.append("--estimate-only")
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timeout {timeout}s"}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
  return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}


def spread(result: dict) -> str:
  """' calls: min / median / max s' over the timed calls, when there were several."""
  times = sorted(result.get("times_s", []))
  if len(times) < 2:
    return ""
  return (f"; {len(times)} calls: {times[0]:.2f} / {times[len(times) // 2]:.2f} / "
          f"{times[-1]:.2f} s (min / median / max)")


def cell(result: dict | None) -> str:
  if result is None:
    return "-"
  if "error" in result:
    return result["error"]
  if "estimate_gb" in result:
    return f"not run (needs ~{result['estimate_gb']:.1f} GB per XLA)"
  return (f"{result['time_s']:.1f} s ({result.get('cpu_s', float('nan')):.1f} cpu-s) / "
          f"{result['peak_rss_gb']:.2f} GB")


def table(results: dict, block_size: int) -> str:
  from _report import machine_line  # pylint: disable=import-outside-toplevel
  sizes = sorted({int(key.split("@")[1]) for key in results})
  lines = [
      f"Loss + gradient w.r.t. both embeddings and the temperature (and bias), D={DIM}, "
      f"float32, CPU; blockwise block_size={block_size}. Each cell: wall time of one "
      "evaluation after compilation (open_clip: after one warm-up call), with the process "
      "CPU time it used (both threads) / peak RSS of the whole fresh process (ru_maxrss). "
      "Command: `python benchmarks/contrastive_loss.py` "
      "(big sizes: `--sizes 65536 131072 --impls clip_blockwise siglip_blockwise`).",
      "",
      f"Machine: {machine_line()}.",
      "",
      "| N | CLIP plain JAX (mmjax) | CLIP plain JAX (optax CE, rows + columns) "
      "| CLIP blockwise JAX | its 4 N^2 D products alone | open_clip ClipLoss "
      "| blockwise / plain (mmjax) "
      "| blockwise / plain (optax) | blockwise / open_clip | SigLIP plain JAX "
      "| SigLIP blockwise JAX | open_clip SigLipLoss |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for n in sizes:
    row = {impl: results.get(f"{impl}@{n}") for impl in IMPLS}

    def ratio(a, b):
      ra, rb = row[a], row[b]
      if ra and rb and "time_s" in ra and "time_s" in rb:
        return (f"{ra['time_s'] / rb['time_s']:.2f}x wall, "
                f"{ra.get('cpu_s', float('nan')) / rb.get('cpu_s', 1):.2f}x cpu")
      return "-"

    lines.append(
        f"| {n} | {cell(row['clip_plain'])} | {cell(row['clip_plain_optax'])} | "
        f"{cell(row['clip_blockwise'])} | {cell(row['clip_blockwise_products'])} | "
        f"{cell(row['clip_open_clip'])} | "
        f"{ratio('clip_blockwise', 'clip_plain')} | {ratio('clip_blockwise', 'clip_plain_optax')} | "
        f"{ratio('clip_blockwise', 'clip_open_clip')} | {cell(row['siglip_plain'])} | "
        f"{cell(row['siglip_blockwise'])} | {cell(row['siglip_open_clip'])} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192, 16384, 32768, 65536])
  parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
  parser.add_argument("--block-size", type=int, default=2048)
  parser.add_argument("--max-dense-n", type=int, default=16384,
                      help="largest N for implementations that materialise N x N")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--timeout", type=int, default=3600)
  parser.add_argument("--results", default="/tmp/mmjax_contrastive_loss_results.json")
  parser.add_argument("--no-write", action="store_true", help="print only, keep README.md")
  parser.add_argument("--note", default="", help="a line appended under the table")
  parser.add_argument("--merge", nargs="*", default=[],
                      help="other --results files to fold in before writing the table")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--impl", help=argparse.SUPPRESS)
  parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--estimate-only", action="store_true", help=argparse.SUPPRESS)
  from _report import LoadWatch, add_load_argument  # pylint: disable=import-outside-toplevel
  add_load_argument(parser)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  load = LoadWatch()
  path = pathlib.Path(args.results)
  results = json.loads(path.read_text()) if path.exists() else {}
  for other in args.merge:
    results.update(json.loads(pathlib.Path(other).read_text()))
  for n in sorted(args.sizes):
    for impl in args.impls:
      dense = impl in DENSE
      if dense and n > args.max_dense_n and impl.endswith("open_clip"):
        continue
      repeats = 1 if n > 16384 else args.repeats
      start = time.time()
      result = run_in_subprocess(impl, n, args.block_size, repeats, args.timeout,
                                 estimate_only=dense and n > args.max_dense_n)
      results[f"{impl}@{n}"] = result
      print(f"{impl:18s} N={n:7d} {cell(result)}  ({time.time() - start:.0f} s){spread(result)}",
            flush=True)
      path.write_text(json.dumps(results, indent=1))
  markdown = table(results, args.block_size)
  if args.note:
    markdown += "\n\n" + args.note
  print(markdown)
  print(load.line())
  if not args.no_write:
    from _report import write_section  # pylint: disable=import-outside-toplevel
    write_section("contrastive_loss", markdown, load, args.allow_loaded)


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  main()
