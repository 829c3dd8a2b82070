"""CLIP train-step throughput: mmjax's trainer step against open_clip + torch AdamW.

One small CLIP, same shape on both sides (ViT 64x64/8, width 256, 6 layers, 4 heads; text 32
tokens, vocab 1000, width 256, 6 layers, 4 heads; MLP ratio 4; embed 256; batch 128; AdamW).
A step is forward + symmetric InfoNCE + backward + AdamW update. The mmjax side is the real
trainer path: `build_model` (models/registry.py), `ContrastiveTask.loss_fn`
(train/tasks/contrastive.py), `make_optimizer` (train/optim.py) and `make_train_step`
(train/trainer.py), jitted with the trainer's shardings and donated state. Trials alternate
between the two sides and the median images/s of each is reported. The README section is
written only when the 1-minute load average was below 1.0 before the run
(the load after may be the run's own; `--allow-loaded` overrides, and the table says so).

  python benchmarks/clip_train_throughput.py              # writes its README section
  python benchmarks/clip_train_throughput.py --variants   # mmjax-only ablations (no README)
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmjax.models import build_model  # noqa: E402
from mmjax.train import sharding  # noqa: E402
from mmjax.train.config import load_config  # noqa: E402
from mmjax.train.optim import make_optimizer  # noqa: E402
from mmjax.train.state import TrainState  # noqa: E402
from mmjax.train.tasks.base import Task  # noqa: E402
from mmjax.train.tasks.contrastive import ContrastiveTask  # noqa: E402
from mmjax.train.trainer import build_state, make_train_step  # noqa: E402

BATCH, IMAGE_SIZE, PATCH, CONTEXT, VOCAB = 128, 64, 8, 32, 1000
WIDTH, LAYERS, HEADS, MLP_RATIO, EMBED = 256, 6, 4, 4.0, 256
PAD_ID, EOS_ID = 0, 2
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.98), 1e-6, 0.1


def mmjax_config(**model_overrides) -> ml_collections.ConfigDict:
  """configs/clip_shapeworld.py with the benchmark's model, batch and plain AdamW."""
  model = dict(name="clip", embed_dim=EMBED, dtype="float32", attention_impl="einsum",
               remat=False, logit_scale_init=math.log(1 / 0.07), logit_bias_init=None,
               image_encoder=dict(name="vision_transformer", patch_size=PATCH, width=WIDTH,
                                  num_layers=LAYERS, num_heads=HEADS, mlp_ratio=MLP_RATIO,
                                  pool="cls"),
               text_encoder=dict(name="text_transformer", width=WIDTH, num_layers=LAYERS,
                                 num_heads=HEADS, mlp_ratio=MLP_RATIO))
  model.update(model_overrides)
  c = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "clip_shapeworld.py"))
  c.batch_size, c.total_steps, c.grad_cache_chunks = BATCH, 100_000, 0
  c.model = ml_collections.ConfigDict(model)
  c.data.image_size, c.data.context_length = IMAGE_SIZE, CONTEXT
  # torch.optim.AdamW has no clipping and a constant lr; match it.
  c.optim.update(dict(learning_rate=LR, warmup_steps=0, end_lr_ratio=1.0, b1=BETAS[0],
                      b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY, clip_grad_norm=None))
  return c


class SyntheticContrastiveTask(ContrastiveTask):
  """`ContrastiveTask` (its model and loss) without tokenizer or data pipeline.

  `tower_overrides` set tower attributes the benchmark's config does not set (ablations only).
  """

  def __init__(self, config, **tower_overrides):
    Task.__init__(self, config)
    model = build_model(config.model, text_encoder=dict(
        vocab_size=VOCAB, context_length=CONTEXT, pad_id=PAD_ID, eos_id=EOS_ID))
    if tower_overrides:
      model = model.clone(image_encoder=model.image_encoder.clone(**tower_overrides),
                          text_encoder=model.text_encoder.clone(**tower_overrides))
    self._model = model
    self._eval_cache, self._jitted = None, {}

  def init_params(self, rng):
    images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
    return self._model.init(rng, images, jnp.zeros((1, CONTEXT), jnp.int32))["params"]


def synthetic_batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Random images `[B, 64, 64, 3]` and token ids `[B, 32]` with one EOS, then padding."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  tokens = rng.integers(3, VOCAB, size=(BATCH, CONTEXT), dtype=np.int32)
  eos = rng.integers(1, CONTEXT, size=BATCH)
  positions = np.arange(CONTEXT)[None]
  tokens = np.where(positions == eos[:, None], EOS_ID, tokens)
  tokens = np.where(positions > eos[:, None], PAD_ID, tokens).astype(np.int32)
  return {"image": images, "text": tokens}


class MmjaxSide:
  """The trainer's jitted step on a one-axis data mesh over the local devices."""

  def __init__(self, batch, *, donate: bool = True, compiler_options=None, towers=None,
               **model_overrides):
    config = mmjax_config(**model_overrides)
    self.mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    task = SyntheticContrastiveTask(config, **(towers or {}))
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    init_fn, _, state_shardings = build_state(task, tx, config, self.mesh)
    # The same jit as `trainer.train`.
    step = jax.jit(make_train_step(task, tx, schedule),
                   in_shardings=(state_shardings, sharding.batch_sharding(self.mesh)),
                   out_shardings=(state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0 if donate else ())
    with self.mesh:
      self.state = init_fn()
      self.batch = sharding.host_batch_to_global(batch, self.mesh)
      start = time.perf_counter()
      self.compiled = step.lower(self.state, self.batch).compile(compiler_options)
      self.compile_s = time.perf_counter() - start
    self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns seconds (the last step's loss is fetched to synchronise)."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.batch)
    loss = float(metrics["loss"])
    elapsed = time.perf_counter() - start
    if not math.isfinite(loss):
      raise FloatingPointError(f"mmjax loss is {loss}")
    return elapsed


class OpenClipSide:
  """open_clip's CLIP of the same shape, `ClipLoss`, `torch.optim.AdamW`, eager float32."""

  def __init__(self, batch, threads: int):
    import open_clip
    import torch
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.model = open_clip.model.CLIP(
        embed_dim=EMBED,
        vision_cfg=CLIPVisionCfg(image_size=IMAGE_SIZE, patch_size=PATCH, width=WIDTH,
                                 layers=LAYERS, head_width=WIDTH // HEADS, mlp_ratio=MLP_RATIO),
        text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=HEADS,
                             layers=LAYERS, mlp_ratio=MLP_RATIO),
        output_dict=True)
    self.model.train()
    self.loss = open_clip.loss.ClipLoss()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=BETAS, eps=EPS,
                                       weight_decay=WEIGHT_DECAY)
    self.images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    self.tokens = torch.from_numpy(batch["text"]).long()
    self.num_params = sum(p.numel() for p in self.model.parameters())

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      self.optimizer.zero_grad(set_to_none=True)
      out = self.model(self.images, self.tokens)
      loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
      loss.backward()
      self.optimizer.step()
    value = float(loss.detach())
    elapsed = time.perf_counter() - start
    if not math.isfinite(value):
      raise FloatingPointError(f"open_clip loss is {value}")
    return elapsed


def alternate(sides: dict, steps: int, trials: int) -> dict[str, list[float]]:
  """images/s per trial for each side, trials interleaved so load changes hit all sides."""
  rates = {name: [] for name in sides}
  for trial in range(trials):
    order = list(sides) if trial % 2 == 0 else list(sides)[::-1]
    for name in order:
      rates[name].append(BATCH * steps / sides[name].run(steps))
  return rates


def spread(values: list[float]) -> str:
  return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def compare(args) -> str:
  batch = synthetic_batch()
  threads = os.cpu_count()
  mm = MmjaxSide(batch, attention_impl=args.attention_impl)
  oc = OpenClipSide(batch, threads)
  mm.run(args.warmup)
  oc.run(args.warmup)
  rates = alternate({"mmjax": mm, "open_clip": oc}, args.steps, args.trials)
  ratios = [a / b for a, b in zip(rates["mmjax"], rates["open_clip"])]
  median_ratio = statistics.median(rates["mmjax"]) / statistics.median(rates["open_clip"])
  table = "\n".join([
      f"Machine: {machine()}; jax {jax.__version__} ({jax.devices()[0].platform}), "
      f"torch {oc.torch.__version__} ({threads} threads).",
      f"Batch {BATCH}, float32, {args.trials} alternating trials x {args.steps} steps after "
      f"{args.warmup} warm-up steps; median (min-max). XLA_FLAGS="
      f"`{os.environ.get('XLA_FLAGS', '')}`.",
      "",
      "| side | params | images/s | compile (s) |",
      "|---|---|---|---|",
      f"| mmjax (trainer step, jit) | {mm.num_params:,} | {spread(rates['mmjax'])} | "
      f"{mm.compile_s:.1f} |",
      f"| open_clip + torch AdamW (eager) | {oc.num_params:,} | {spread(rates['open_clip'])} | - |",
      "",
      f"**mmjax / open_clip = {median_ratio:.2f}x** (ratio of medians; per-trial ratios "
      f"{', '.join(f'{r:.2f}' for r in ratios)}).",
  ])
  return table


VARIANTS = {
    "default": {},
    "attention_impl=xla": dict(attention_impl="xla"),
    "gelu exact (erf)": dict(towers=dict(gelu_approximate=False)),
    "no donation": dict(donate=False),
    "xla_cpu_enable_fast_math": dict(compiler_options=dict(xla_cpu_enable_fast_math=True)),
    "ynn off (Eigen dots)": dict(compiler_options=dict(xla_cpu_experimental_ynn_fusion_type="")),
}


def variants(args) -> str:
  batch = synthetic_batch()
  names = args.only or list(VARIANTS)
  sides = {name: MmjaxSide(batch, **VARIANTS[name]) for name in names}
  for side in sides.values():
    side.run(args.warmup)
  rates = alternate(sides, args.steps, args.trials)
  base = statistics.median(rates[names[0]])
  lines = ["| variant | images/s | vs first | compile (s) |", "|---|---|---|---|"]
  for name in names:
    lines.append(f"| {name} | {spread(rates[name])} | "
                 f"{statistics.median(rates[name]) / base:.2f}x | {sides[name].compile_s:.1f} |")
  return "\n".join(lines)


def machine() -> str:
  from benchmarks._report import machine_line
  return machine_line()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5, help="steps per timed trial")
  parser.add_argument("--trials", type=int, default=7, help="alternating trials per side")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--attention_impl", default="einsum")
  parser.add_argument("--variants", action="store_true",
                      help="time mmjax variants against each other instead (README untouched)")
  parser.add_argument("--only", nargs="*", help="variant names to run (first is the baseline)")
  parser.add_argument("--no_write", action="store_true", help="print only")
  from benchmarks._report import LoadWatch, add_load_argument, write_section
  add_load_argument(parser)
  args = parser.parse_args()
  load = LoadWatch()
  if args.variants:
    print(variants(args))
    print(load.line())
    return
  table = compare(args)
  print(table)
  print(load.line())
  if not args.no_write:
    write_section("clip_train_throughput", table, load, args.allow_loaded)


if __name__ == "__main__":
  main()
