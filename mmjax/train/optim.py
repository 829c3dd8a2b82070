"""Optimizer from config: AdamW with linear warm-up + cosine decay and gradient clipping."""
from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Warm-up from 0 to `learning_rate` over `warmup_steps`, then cosine to `end_lr_ratio` x lr."""
  warmup = min(int(config.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup, max(total_steps, warmup + 1),
      end_value=config.learning_rate * config.get("end_lr_ratio", 0.0))


def decay_mask(params):
  """Weight decay on matrices only: not on biases, norms, embeddings' scalars or temperatures."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for `config.optim`."""
  if config.name != "adamw":
    raise ValueError(f"optim.name must be 'adamw', got {config.name!r}")
  schedule = learning_rate_schedule(config, total_steps)
  chain = []
  if config.get("clip_grad_norm"):
    chain.append(optax.clip_by_global_norm(config.clip_grad_norm))
  chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*chain), schedule
