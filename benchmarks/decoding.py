"""Autoregressive decoding throughput: mmjax KV cache vs recompute vs transformers' generate.

One GPT-2-shaped decoder-only LM with random weights (6 layers, width 256, 4 heads, MLP 1024,
vocab 1000), batch 16, prompt 8, 64 new tokens (no EOS, so every row emits all 64), float32,
CPU. mmjax: `TextDecoder(cross_attention=False)` from mmjax.models.captioner, decoded by
`mmjax.decoding.greedy` / `beam_search(num_beams=4)` with

  * the per-row KV cache (`decode=True`, `positions` per row), and
  * `recompute_step_fn` (the full causal forward over all 72 positions at every step).

PyTorch: `transformers.GPT2LMHeadModel.generate` (its own KV cache) on the same shape, with
`torch.no_grad()`. Times are wall seconds of one full decode after compilation (jax AOT
`lower().compile()`) or after one warm-up call (torch); tokens/s counts the B x 64 returned
tokens (beam search computes 4 beams per row for them).

  python benchmarks/decoding.py [--repeats 1] [--no-write] [--allow-loaded]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmjax import decoding  # pylint: disable=wrong-import-position
from mmjax.models.captioner import TextDecoder  # pylint: disable=wrong-import-position

LAYERS, WIDTH, HEADS, VOCAB = 6, 256, 4, 1000
BATCH, PROMPT, NEW_TOKENS = 16, 8, 64
MAX_LENGTH = PROMPT + NEW_TOKENS


def make_mmjax(seed: int = 0):
  """Returns (decoder, params) of the decoder-only LM."""
  decoder = TextDecoder(VOCAB, MAX_LENGTH, WIDTH, LAYERS, HEADS, mlp_ratio=4.0,
                        cross_attention=False)
  params = jax.jit(decoder.init)(jax.random.key(seed), jnp.zeros((1, MAX_LENGTH), jnp.int32))
  # Plain init (logit std ~1). Scaling the weights up to sharpen the logits makes this random
  # network chaotic: x3 already moves logits by 0.4 between batch shapes (GEMM blocking), so
  # the cache and recompute paths would pick different beams for numerical reasons.
  return decoder, params["params"]


def init_kv_cache(decoder: TextDecoder, params, batch: int, max_length: int):
  """Zero per-row KV cache (the flax "cache" collection) for `batch` rows."""
  tokens = jnp.zeros((batch, max_length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(max_length, dtype=jnp.int32), (batch, max_length))
  _, shapes = jax.eval_shape(
      lambda p: decoder.clone(decode=True).apply({"params": p}, tokens, None, positions,
                                                 mutable=["cache"]), params)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def cached_step(decoder, params, tokens, cache, positions):
  logits, variables = decoder.clone(decode=True).apply(
      {"params": params, "cache": cache}, tokens, None, positions, mutable=["cache"])
  return logits, variables["cache"]


def run_mmjax(decoder, params, prompt, method: str, num_beams: int, repeats: int) -> dict:
  """Wall time of one decode (`method` "cache" or "recompute") after AOT compilation."""
  def decode(params, prompt):
    if method == "cache":
      step_fn = functools.partial(cached_step, decoder, params)
      cache = init_kv_cache(decoder, params, BATCH, MAX_LENGTH)
    else:
      step_fn = decoding.recompute_step_fn(lambda buffer, _: decoder.apply({"params": params},
                                                                           buffer))
      cache = decoding.init_recompute_cache(BATCH, MAX_LENGTH)
    if num_beams == 1:
      return decoding.greedy(step_fn, cache, prompt, max_new_tokens=NEW_TOKENS, eos_id=None)
    return decoding.beam_search(step_fn, cache, prompt, num_beams=num_beams,
                                max_new_tokens=NEW_TOKENS, eos_id=None)

  start = time.perf_counter()
  compiled = jax.jit(decode).lower(params, prompt).compile()
  compile_s = time.perf_counter() - start
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(params, prompt))
    times.append(time.perf_counter() - start)
  return {"time_s": min(times), "compile_s": compile_s, "tokens": np.asarray(out.tokens)}


def run_torch(prompt: np.ndarray, num_beams: int, repeats: int) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=MAX_LENGTH, n_embd=WIDTH,
                                   n_layer=LAYERS, n_head=HEADS, bos_token_id=None,
                                   eos_token_id=None, pad_token_id=0)
  model = transformers.GPT2LMHeadModel(config).eval()
  input_ids = torch.as_tensor(np.array(prompt), dtype=torch.long)
  kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                num_beams=num_beams, use_cache=True, pad_token_id=0,
                attention_mask=torch.ones_like(input_ids))
  times = []
  with torch.no_grad():
    model.generate(input_ids, **kwargs)  # warm-up
    for _ in range(repeats):
      start = time.perf_counter()
      out = model.generate(input_ids, **kwargs)
      times.append(time.perf_counter() - start)
  assert out.shape == (BATCH, MAX_LENGTH), out.shape
  return {"time_s": min(times), "torch": torch.__version__,
          "transformers": transformers.__version__,
          "threads": torch.get_num_threads()}


def table(results: dict) -> str:
  from _report import machine_line  # pylint: disable=import-outside-toplevel
  tokens = BATCH * NEW_TOKENS

  def cell(key):
    r = results.get(key)
    return "-" if r is None else f"{tokens / r['time_s']:,.0f} tok/s ({r['time_s']:.2f} s)"

  def ratio(a, b):
    ra, rb = results.get(a), results.get(b)
    return "-" if not (ra and rb) else f"{rb['time_s'] / ra['time_s']:.1f}x"

  torch_info = results.get("torch_greedy") or {}
  lines = [
      f"GPT-2-shaped decoder-only LM with random weights ({LAYERS} layers, width {WIDTH}, "
      f"{HEADS} heads, MLP {4 * WIDTH}, vocab {VOCAB}), float32, batch {BATCH}, prompt "
      f"{PROMPT}, {NEW_TOKENS} new tokens per row (no EOS). Each cell: returned tokens/s "
      f"(B x {NEW_TOKENS} / wall time of one whole decode) and the wall time; jax after AOT "
      "compilation, torch after one warm-up call; beam-4 computes 4 beams per returned row. "
      "mmjax: `mmjax.decoding.greedy` / `beam_search` (one jitted `lax.while_loop`) over "
      "`TextDecoder(cross_attention=False)` with the per-row KV cache, or over "
      "`recompute_step_fn` (the full forward over all "
      f"{MAX_LENGTH} positions each step). PyTorch: transformers `GPT2LMHeadModel.generate` "
      f"(torch {torch_info.get('torch', '?')}, transformers {torch_info.get('transformers', '?')}, "
      f"{torch_info.get('threads', '?')} threads, `no_grad`). "
      "Command: `python benchmarks/decoding.py`.",
      "",
      f"Machine: {machine_line()}.",
      "",
      "| decoding | mmjax KV cache | mmjax recompute | transformers generate (PyTorch) "
      "| cache / recompute | cache / PyTorch |",
      "|---|---|---|---|---|---|",
  ]
  for name, suffix in (("greedy", "greedy"), ("beam search, 4 beams", "beam4")):
    lines.append(f"| {name} | {cell('cache_' + suffix)} | {cell('recompute_' + suffix)} | "
                 f"{cell('torch_' + suffix)} | {ratio('cache_' + suffix, 'recompute_' + suffix)} "
                 f"| {ratio('cache_' + suffix, 'torch_' + suffix)} |")
  same = results.get("greedy_tokens_match")
  if same is not None:
    lines += ["", f"Greedy tokens of the KV-cache and recompute paths identical: {same}; "
              f"beam-4: {results.get('beam4_tokens_match')}."]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--skip", nargs="*", default=[],
                      help="keys to skip, e.g. recompute_beam4 torch_beam4")
  parser.add_argument("--no-write", action="store_true", help="print only, keep README.md")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _report import LoadWatch, add_load_argument  # pylint: disable=import-outside-toplevel
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  decoder, params = make_mmjax()
  prompt = jax.random.randint(jax.random.key(1), (BATCH, PROMPT), 3, VOCAB, jnp.int32)
  results = {}
  for suffix, beams in (("greedy", 1), ("beam4", 4)):
    for method in ("cache", "recompute"):
      key = f"{method}_{suffix}"
      if key in args.skip:
        continue
      results[key] = run_mmjax(decoder, params, prompt, method, beams, args.repeats)
      print(key, {k: v for k, v in results[key].items() if k != "tokens"}, flush=True)
    if f"torch_{suffix}" not in args.skip:
      results[f"torch_{suffix}"] = run_torch(np.asarray(prompt), beams, args.repeats)
      print(f"torch_{suffix}", results[f"torch_{suffix}"], flush=True)
    if f"cache_{suffix}" in results and f"recompute_{suffix}" in results:
      results[f"{suffix}_tokens_match"] = bool(np.array_equal(
          results[f"cache_{suffix}"]["tokens"], results[f"recompute_{suffix}"]["tokens"]))
  markdown = table(results)
  print(markdown)
  print(load.line())
  print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "tokens"}
                    if isinstance(v, dict) else v for k, v in results.items()}))
  if not args.no_write:
    from _report import write_section  # pylint: disable=import-outside-toplevel
    write_section("decoding", markdown, load, args.allow_loaded)


if __name__ == "__main__":
  main()
