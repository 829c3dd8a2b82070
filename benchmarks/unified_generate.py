"""Unified (LLaVA-style) decoder generation: mmjax KV cache vs recompute vs transformers' LLaVA.

One shape for both sides, random weights, float32, CPU: 32x32 images, ViT patch 4 (64 patch
tokens; the class token is dropped on both sides), vision width 128 x 2 layers, 4 heads; a
2-layer GELU MLP projector; LM width 256 x 4 layers, 4 heads, MLP ratio 4, vocab 1000; batch 8,
the 64 image tokens then an 8-token text prompt, 32 new tokens by greedy decoding with EOS
disabled, so every row emits exactly 32 tokens on every side.

  * mmjax KV cache: `UnifiedDecoder.init_cache` (encodes the images, writes their K/V once)
    and `mmjax.decoding.greedy` over `decode_step`;
  * mmjax recompute: `greedy` over `decoding.recompute_step_fn` of the full forward
    `model.apply(params, images, tokens)`, i.e. the ViT, the projector and the LM over
    [64 image tokens; all 40 text slots] at every step (a decoder without a KV cache);
  * transformers: `LlavaForConditionalGeneration.generate(use_cache=True)` with
    `pixel_values` (CLIP vision tower, `vision_feature_layer=-1`, "default" strategy, which
    drops CLS; GPT-2 text model: learned positions, LayerNorm and GELU MLP with biases, the
    closest to mmjax's LM of the text models LLaVA accepts), torch eager,
    `torch.inference_mode()`, `torch.set_num_threads(--torch-threads)`. Its `input_ids` hold
    the 64 `<image>` ids (`image_seq_length` copies) before the prompt: transformers 5.x
    splices one image feature into each and refuses any other count.

Images are encoded inside every timed call. Times are wall seconds of one whole decode after
AOT compilation (jax `lower().compile()`) or after one warm-up call (torch), median of
`--repeats`; tokens/s = batch x new tokens / that time. The two mmjax paths must return the
same tokens (the table says whether they did); the torch model has other random weights.

Run it in an environment with mmjax, torch and transformers installed
(`pip install torch transformers` beside `pip install -e .`):

  python benchmarks/unified_generate.py [--repeats 3] [--no-write] [--allow-loaded]

`--help` and the mmjax side import no torch.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmjax import decoding  # pylint: disable=wrong-import-position
from mmjax.models import build_model  # pylint: disable=wrong-import-position

IMAGE_SIZE, PATCH, VISION_WIDTH, VISION_LAYERS, VISION_HEADS = 32, 4, 128, 2, 4
WIDTH, LAYERS, HEADS, MLP_RATIO, VOCAB = 256, 4, 4, 4.0, 1000
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # 64, the class token dropped
BATCH, PROMPT, NEW_TOKENS = 8, 8, 32
# LLaVA's `<image>` id: the last vocabulary entry, which the prompts never use (mmjax needs no
# placeholder for images-first rows).
IMAGE_TOKEN_ID = VOCAB - 1
SECTION = "unified_generate"


def make_mmjax(max_length: int, seed: int = 0):
  """(model, unboxed params) of the images-first `UnifiedDecoder`; `max_length` text slots."""
  config = dict(name="unified_decoder", image_positions=IMAGE_TOKENS, drop_class_token=True,
                projector="mlp", projector_depth=2, width=WIDTH, num_layers=LAYERS,
                num_heads=HEADS, mlp_ratio=MLP_RATIO,
                vision_encoder=dict(name="vision_transformer", patch_size=PATCH,
                                    width=VISION_WIDTH, num_layers=VISION_LAYERS,
                                    num_heads=VISION_HEADS, mlp_ratio=MLP_RATIO))
  model = build_model(config, vocab_size=VOCAB, max_length=max_length)
  images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(seed), images,
                               jnp.zeros((1, max_length), jnp.int32))["params"]
  return model, nn.unbox(params)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def mmjax_param_groups(params) -> dict:
  """Parameter counts: vision encoder, projector MLP, LM. The projector's learned image
  positions count with the LM, as GPT-2's positions of the image slots do on the torch side."""
  vision = count_params(params["vision_encoder"])
  projector = count_params({k: v for k, v in params["projector"].items() if k != "pos_embed"})
  return {"vision": vision, "projector": projector,
          "lm": count_params(params) - vision - projector}


def run_mmjax(model, params, images, prompt, method: str, new_tokens: int, repeats: int) -> dict:
  """Median wall time of one greedy decode (`method` "cached" or "recompute") after AOT
  compilation; images `[B, H, W, 3]`, prompt int32 `[B, P]`."""
  batch, max_length = prompt.shape[0], prompt.shape[1] + new_tokens

  def decode(params, images, prompt):
    if method == "cached":
      cache = model.init_cache(params, images, max_length)
      step = functools.partial(model.decode_step, params)
    else:
      forward = lambda tokens, context: model.apply({"params": params}, context, tokens)
      cache = decoding.init_recompute_cache(batch, max_length, images)
      step = decoding.recompute_step_fn(forward)
    return decoding.greedy(step, cache, prompt, max_new_tokens=new_tokens, eos_id=None).tokens

  start = time.perf_counter()
  compiled = jax.jit(decode).lower(params, images, prompt).compile()
  compile_s = time.perf_counter() - start
  times, tokens = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    tokens = jax.block_until_ready(compiled(params, images, prompt))
    times.append(time.perf_counter() - start)
  return {"time_s": statistics.median(times), "times_s": times, "compile_s": compile_s,
          "tokens": np.asarray(tokens)}


def make_llava(max_positions: int):
  """transformers' LLaVA of the benchmark's shape (CLIP vision tower, GPT-2 text model)."""
  import transformers  # pylint: disable=import-outside-toplevel
  vision = transformers.CLIPVisionConfig(
      hidden_size=VISION_WIDTH, intermediate_size=int(VISION_WIDTH * MLP_RATIO),
      num_hidden_layers=VISION_LAYERS, num_attention_heads=VISION_HEADS, image_size=IMAGE_SIZE,
      patch_size=PATCH, num_channels=3, hidden_act="gelu_pytorch_tanh")
  # n_positions covers the whole sequence (GPT-2 numbers image and text slots alike); that is
  # as many position vectors as mmjax's image positions plus its text positions.
  text = transformers.GPT2Config(
      vocab_size=VOCAB, n_positions=max_positions, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
      n_inner=int(WIDTH * MLP_RATIO), activation_function="gelu_new", bos_token_id=None,
      eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
  config = transformers.LlavaConfig(
      vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
      image_seq_length=IMAGE_TOKENS, vision_feature_layer=-1,
      vision_feature_select_strategy="default", projector_hidden_act="gelu_pytorch_tanh",
      tie_word_embeddings=False)
  return transformers.LlavaForConditionalGeneration(config).eval()


def run_torch(images: np.ndarray, prompt: np.ndarray, new_tokens: int, repeats: int,
              threads: int) -> dict:
  """Median wall time of `generate` after one warm-up call; images `[B, H, W, 3]`."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = make_llava(IMAGE_TOKENS + prompt.shape[1] + new_tokens)
  numel = lambda module: sum(p.numel() for p in module.parameters())
  counts = {"vision": numel(model.model.vision_tower),
            "projector": numel(model.model.multi_modal_projector)}
  counts["lm"] = numel(model) - sum(counts.values())  # GPT-2 and the LM head
  batch = prompt.shape[0]
  input_ids = torch.cat([torch.full((batch, IMAGE_TOKENS), IMAGE_TOKEN_ID, dtype=torch.long),
                         torch.tensor(np.array(prompt), dtype=torch.long)], dim=1)
  pixel_values = torch.tensor(np.array(images)).permute(0, 3, 1, 2).contiguous()
  kwargs = dict(input_ids=input_ids, pixel_values=pixel_values,
                attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
                pad_token_id=0)
  times, out = [], None
  with torch.inference_mode():
    model.generate(**kwargs)  # warm-up
    for _ in range(repeats):
      start = time.perf_counter()
      out = model.generate(**kwargs)
      times.append(time.perf_counter() - start)
  if out.shape != (batch, input_ids.shape[1] + new_tokens):
    raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected "
                       f"{(batch, input_ids.shape[1] + new_tokens)}: EOS was not disabled")
  return {"time_s": statistics.median(times), "times_s": times, "params": counts,
          "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads(),
          # pylint: disable-next=protected-access
          "attention": model.config.text_config._attn_implementation}


def table(results: dict, mmjax_params: dict, batch: int, new_tokens: int, repeats: int) -> str:
  from _report import machine_line  # pylint: disable=import-outside-toplevel
  emitted = batch * new_tokens
  cached, recompute, torch_side = (results.get(k) for k in ("cached", "recompute", "torch"))
  torch_info = torch_side or {}
  total = lambda groups: f"{sum(groups.values()):,}"
  split = lambda groups: " + ".join(f"{groups[k]:,}" for k in ("vision", "projector", "lm"))

  def rate(r):
    return "-" if r is None else f"{emitted / r['time_s']:,.0f} tok/s ({r['time_s']:.2f} s)"

  def speed_up(r):
    return "-" if not (r and cached) else f"{r['time_s'] / cached['time_s']:.2f}x"

  same = ("-" if not (cached and recompute)
          else str(bool(np.array_equal(cached["tokens"], recompute["tokens"]))))
  lines = [
      f"Random weights, float32, batch {batch}: {IMAGE_SIZE}x{IMAGE_SIZE} images, ViT patch "
      f"{PATCH} ({IMAGE_TOKENS} patch tokens, CLS dropped), vision width {VISION_WIDTH} x "
      f"{VISION_LAYERS} layers; 2-layer GELU MLP projector; LM width {WIDTH} x {LAYERS} layers, "
      f"{HEADS} heads, MLP {int(WIDTH * MLP_RATIO)}, vocab {VOCAB}; the image tokens, then "
      f"{PROMPT} prompt tokens, then {new_tokens} greedy tokens per row (EOS disabled). Each "
      f"cell: B x {new_tokens} / the median wall time of {repeats} whole decode(s), "
      "images encoded inside the timed call; jax after AOT compilation, torch after one "
      "warm-up call. mmjax: `UnifiedDecoder` with `init_cache` (image K/V written once) + "
      "`mmjax.decoding.greedy`, or `recompute_step_fn` (ViT, projector and LM over "
      f"{IMAGE_TOKENS} image + {PROMPT + new_tokens} text slots every step). PyTorch: "
      "transformers `LlavaForConditionalGeneration.generate(use_cache=True)` (CLIP vision "
      "tower, `vision_feature_layer=-1`, GPT-2 text model; torch "
      f"{torch_info.get('torch', '?')}, transformers {torch_info.get('transformers', '?')}, "
      f"{torch_info.get('threads', '?')} threads, eager, `inference_mode`, "
      f"{torch_info.get('attention', '?')} attention). Command: "
      "`python benchmarks/unified_generate.py` (with torch and transformers installed).",
      "",
      f"Machine: {machine_line()}; jax {jax.__version__} ({jax.default_backend()}).",
      "",
      "| side | params (vision + projector MLP + LM with all positions) "
      "| tokens/s (median wall) | compile (s) | time / mmjax KV cache | same tokens as KV cache |",
      "|---|---|---|---|---|---|",
  ]
  rows = (("mmjax KV cache", cached, mmjax_params, "-"),
          ("mmjax recompute", recompute, mmjax_params, same),
          ("transformers LLaVA generate", torch_side, torch_info.get("params"),
           "- (other weights)"))
  for name, r, groups, tokens in rows:
    params = f"{total(groups)} ({split(groups)})" if groups else "-"
    compile_s = f"{r['compile_s']:.1f}" if r and "compile_s" in r else "-"
    lines.append(f"| {name} | {params} | {rate(r)} | {compile_s} | {speed_up(r)} | {tokens} |")
  if cached and (recompute or torch_side):
    parts = []
    if recompute:
      parts.append(f"KV cache / recompute = {recompute['time_s'] / cached['time_s']:.2f}x")
    if torch_side:
      parts.append(f"mmjax KV cache / transformers = "
                   f"{torch_side['time_s'] / cached['time_s']:.2f}x")
    lines += ["", "**" + "; ".join(parts) + "** (speed ratios of the median times)."]
  lines += [
      "", "Parameters differ only in: mmjax's ViT patch embedding has a bias "
      f"(+{VISION_WIDTH}) and its LM head a bias (+{VOCAB}); its image tokens get the ViT's "
      "final LayerNorm, where LLaVA takes CLIP's last hidden state before `post_layernorm` "
      f"(whose {2 * VISION_WIDTH} parameters only act on the unused pooled output); mmjax "
      f"learns {IMAGE_TOKENS} image positions (in its projector; counted with the LM above) and "
      f"{PROMPT + new_tokens} text positions, GPT-2 {IMAGE_TOKENS + PROMPT + new_tokens} "
      "positions over the whole sequence (the same count). GELU is the tanh form everywhere."]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch", type=int, default=BATCH)
  parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
  parser.add_argument("--torch-threads", type=int, default=2)
  parser.add_argument("--skip", nargs="*", default=[], choices=("cached", "recompute", "torch"),
                      help="rows to skip")
  parser.add_argument("--no-write", action="store_true", help="print only, keep README.md")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _report import LoadWatch, add_load_argument  # pylint: disable=import-outside-toplevel
  add_load_argument(parser)
  args = parser.parse_args()
  if args.batch < 1 or args.new_tokens < 1 or args.repeats < 1:
    parser.error("--batch, --new-tokens and --repeats must be >= 1")
  load = LoadWatch()
  model, params = make_mmjax(PROMPT + args.new_tokens)
  mmjax_params = mmjax_param_groups(params)
  images = jax.random.uniform(jax.random.key(1), (args.batch, IMAGE_SIZE, IMAGE_SIZE, 3))
  # Ids 3 .. V-2: no pad (0) and never LLaVA's `<image>` id.
  prompt = jax.random.randint(jax.random.key(2), (args.batch, PROMPT), 3, IMAGE_TOKEN_ID,
                              jnp.int32)
  results = {}
  for method in ("cached", "recompute"):
    if method not in args.skip:
      results[method] = run_mmjax(model, params, images, prompt, method, args.new_tokens,
                                  args.repeats)
      print(method, {k: v for k, v in results[method].items() if k != "tokens"}, flush=True)
  if "torch" not in args.skip:
    results["torch"] = run_torch(np.asarray(images), np.asarray(prompt), args.new_tokens,
                                 args.repeats, args.torch_threads)
    print("torch", results["torch"], flush=True)
  markdown = table(results, mmjax_params, args.batch, args.new_tokens, args.repeats)
  print(markdown)
  print(load.line())
  print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "tokens"}
                    for k, v in results.items()}))
  if not args.no_write:
    from _report import write_section  # pylint: disable=import-outside-toplevel
    write_section(SECTION, markdown, load, args.allow_loaded)


if __name__ == "__main__":
  main()
