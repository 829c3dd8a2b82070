"""Captioner decoding: cross-attention K/V cached once per image vs re-projected every step.

The default `configs/caption_shapeworld.py` Captioner (ViT with 256 image tokens of width 128,
2-layer width-128 decoder cross-attending to them) with random weights, batch 32, 23 new
tokens (no EOS), float32, CPU, decoded by `mmjax.decoding.greedy` and `beam_search(num_beams=4)`
over `Captioner.decode_step`:

  * cached: `init_cache` projects the image tokens to each layer's cross-attention keys and
    values once; every step reuses them (what mmjax does);
  * re-projected: the same step with the cached cross K/V dropped from the cache before each
    call, so every step projects all 256 image tokens again in every layer (what the decoder
    did before the cross-attention cache, and what a decoder without one does).

Both paths include encoding the images; times are wall seconds of one whole decode after AOT
compilation, median of `--repeats`.

  python benchmarks/caption_decoding.py [--repeats 3] [--no-write] [--allow-loaded]
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmjax import decoding  # pylint: disable=wrong-import-position
from mmjax.models.captioner import CaptionCache, Captioner  # pylint: disable=wrong-import-position

BATCH, NEW_TOKENS, IMAGE_SIZE, VOCAB = 32, 23, 64, 80
CROSS_KEYS = ("cross_kv",)


def make_model(seed: int = 0):
  model = Captioner(vocab_size=VOCAB, max_length=NEW_TOKENS + 1, patch_size=1, vision_width=128,
                    vision_layers=2, vision_heads=4, text_width=128, text_layers=2, text_heads=4,
                    mlp_ratio=4.0, stem_channels=(16, 32))
  images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(seed), images,
                               jnp.zeros((1, NEW_TOKENS + 1), jnp.int32))["params"]
  return model, params


def _drop_cross(tree):
  """The cache without the cross-attention K/V (so the next step re-projects them)."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _drop_cross(v) for k, v in tree.items() if k not in CROSS_KEYS}
  return tree


def reprojecting_step(model, params, tokens, cache, positions):
  logits, new = model.decode_step(params, tokens, CaptionCache(cache.image_tokens,
                                                               _drop_cross(cache.kv)), positions)
  return logits, CaptionCache(new.image_tokens, _drop_cross(new.kv))


def run(model, params, images, method: str, num_beams: int, repeats: int) -> dict:
  prompt = jnp.ones((BATCH, 1), jnp.int32)  # BOS
  lengths = jnp.ones((BATCH,), jnp.int32)

  def decode(params, images):
    cache = model.init_cache(params, images, NEW_TOKENS + 1)
    if method == "cached":
      step = functools.partial(model.decode_step, params)
    else:
      cache = CaptionCache(cache.image_tokens, _drop_cross(cache.kv))
      step = functools.partial(reprojecting_step, model, params)
    kw = dict(max_new_tokens=NEW_TOKENS, eos_id=None)
    if num_beams == 1:
      return decoding.greedy(step, cache, prompt, lengths, **kw).tokens
    return decoding.beam_search(step, cache, prompt, lengths, num_beams=num_beams, **kw).tokens

  start = time.perf_counter()
  compiled = jax.jit(decode).lower(params, images).compile()
  compile_s = time.perf_counter() - start
  times, tokens = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    tokens = jax.block_until_ready(compiled(params, images))
    times.append(time.perf_counter() - start)
  return {"time_s": statistics.median(times), "compile_s": compile_s, "tokens": np.asarray(tokens)}


def table(results: dict) -> str:
  from _report import machine_line  # pylint: disable=import-outside-toplevel
  lines = [
      "Default `configs/caption_shapeworld.py` Captioner with random weights (ViT: 256 image "
      "tokens, width 128; decoder: 2 layers, width 128, cross-attending to all image tokens), "
      f"float32, batch {BATCH}, {NEW_TOKENS} new tokens (no EOS), images encoded inside the "
      "timed call; median wall time of one whole decode after AOT compilation. Cached: "
      "`init_cache` projects the image tokens to cross-attention K/V once; re-projected: the "
      "same steps with those K/V dropped from the cache, so every step projects the 256 image "
      "tokens again in every layer. Command: `python benchmarks/caption_decoding.py`.",
      "",
      f"Machine: {machine_line()}.",
      "",
      "| decoding | cross K/V cached | re-projected every step | speed-up | same tokens |",
      "|---|---|---|---|---|",
  ]
  for name, suffix in (("greedy", "greedy"), ("beam search, 4 beams", "beam4")):
    a, b = results.get(f"cached_{suffix}"), results.get(f"reprojected_{suffix}")
    if not (a and b):
      continue
    same = bool(np.array_equal(a["tokens"], b["tokens"]))
    rate = lambda r: f"{BATCH * NEW_TOKENS / r['time_s']:,.0f} tok/s ({r['time_s']:.2f} s)"
    lines.append(f"| {name} | {rate(a)} | {rate(b)} | {b['time_s'] / a['time_s']:.1f}x | "
                 f"{same} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-write", action="store_true", help="print only, keep README.md")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _report import LoadWatch, add_load_argument  # pylint: disable=import-outside-toplevel
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  model, params = make_model()
  images = jax.random.uniform(jax.random.key(1), (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3))
  results = {}
  for suffix, beams in (("greedy", 1), ("beam4", 4)):
    for method in ("cached", "reprojected"):
      results[f"{method}_{suffix}"] = run(model, params, images, method, beams, args.repeats)
      print(f"{method}_{suffix}", {k: round(v, 3) for k, v in results[f"{method}_{suffix}"].items()
                                   if k != "tokens"}, flush=True)
  markdown = table(results)
  print(markdown)
  print(load.line())
  if not args.no_write:
    from _report import write_section  # pylint: disable=import-outside-toplevel
    write_section("caption_decoding", markdown, load, args.allow_loaded)


if __name__ == "__main__":
  main()
