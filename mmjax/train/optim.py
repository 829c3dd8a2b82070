"""Optimizer from config: AdamW with linear warm-up + cosine decay and gradient clipping,
optionally over a trainable subset of the parameters (`optim.trainable`).

`optim.trainable` is empty (everything trains) or a sequence of patterns over "/"-joined
parameter paths: a leaf trains iff its path, or one of the "/"-bounded prefixes of its path,
matches a pattern with `fnmatch.fnmatchcase` ("projector" matches "projector/fc1/kernel" but
"proj" does not; "transformer/gated_xattn_*" matches "transformer/gated_xattn_1/..."; as in
fnmatch, `*` may span "/"). Frozen leaves get `optax.set_to_zero()`: no Adam moments, and they
stay bit-identical. Clipping and weight decay see only the trainable leaves. (`optax.masked`
would not freeze: it passes the masked-out leaves' raw gradients through as their updates.)
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

PyTree = Any

TRAIN, FREEZE = "train", "freeze"


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Warm-up from 0 to `learning_rate` over `warmup_steps`, then cosine to `end_lr_ratio` x lr."""
  warmup = min(int(config.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, warmup, max(total_steps, warmup + 1),
      end_value=config.learning_rate * config.get("end_lr_ratio", 0.0))


def decay_mask(params):
  """Weight decay on matrices only: not on biases, norms, embeddings' scalars or temperatures."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _paths(params: PyTree) -> PyTree:
  """The "/"-joined dict-key path of every leaf, shaped like `nn.unbox(params)`."""
  def path_of(path, _):
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
  return jax.tree_util.tree_map_with_path(path_of, params, is_leaf=_is_box)


def _check_patterns(patterns) -> tuple[str, ...]:
  if isinstance(patterns, str) or not isinstance(patterns, Sequence):
    raise ValueError("optim.trainable must be a sequence of path patterns such as "
                     f"('projector',), got {patterns!r}")
  for pattern in patterns:
    if not isinstance(pattern, str) or not pattern.strip("/"):
      raise ValueError(f"optim.trainable patterns must be non-empty strings such as "
                       f"'projector' or 'transformer/gated_xattn_*', got {pattern!r}")
  return tuple(p.strip("/") for p in patterns)


def _matches(path: str, pattern: str) -> bool:
  parts = path.split("/")
  return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def trainable_mask(params: PyTree, patterns: Sequence[str]) -> PyTree:
  """Bools shaped like `nn.unbox(params)` (a prefix of boxed params): True where a leaf's path
  matches one of `patterns` (see the module docstring).

  ValueError if a pattern matches no parameter, or if no leaf would train; the message names
  the patterns and lists the model's top-level parameter names.
  """
  patterns = _check_patterns(patterns)
  paths = _paths(params)
  all_paths = jax.tree.leaves(paths)
  unmatched = [p for p in patterns if not any(_matches(path, p) for path in all_paths)]
  if unmatched:
    top_level = sorted({path.split("/")[0] for path in all_paths})
    nothing = "; no parameter would train" if len(unmatched) == len(patterns) else ""
    raise ValueError(f"optim.trainable pattern(s) {unmatched} match no parameter{nothing}. "
                     f"Patterns match '/'-joined parameter paths or their prefixes; the model's "
                     f"top-level parameters are {top_level}")
  return jax.tree.map(lambda path: any(_matches(path, p) for p in patterns), paths)


def count_params(params: PyTree, patterns: Sequence[str]) -> tuple[int, int]:
  """(trainable, total) numbers of scalars in `params` (boxed or not; arrays or
  ShapeDtypeStructs) under `optim.trainable=patterns`; empty patterns: everything trains."""
  sizes = jax.tree.map(lambda x: math.prod(x.shape), nn.unbox(params))
  total = sum(jax.tree.leaves(sizes))
  if not patterns:
    return total, total
  mask = trainable_mask(params, patterns)
  return sum(s for s, t in zip(jax.tree.leaves(sizes), jax.tree.leaves(mask)) if t), total


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for `config.optim`.

  With `config.trainable` set, the optimizer checks the patterns against the params at
  `init` (a ValueError there names a pattern that matches nothing).
  """
  if config.name != "adamw":
    raise ValueError(f"optim.name must be 'adamw', got {config.name!r}")
  schedule = learning_rate_schedule(config, total_steps)
  chain = []
  if config.get("clip_grad_norm"):
    chain.append(optax.clip_by_global_norm(config.clip_grad_norm))
  chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  tx = optax.chain(*chain)
  patterns = config.get("trainable")
  if not patterns:
    return tx, schedule
  patterns = _check_patterns(patterns)

  def labels(params):
    return jax.tree.map(lambda t: TRAIN if t else FREEZE, trainable_mask(params, patterns))
  # Clipping inside the "train" branch: its global norm is over the trainable gradients only.
  return optax.multi_transform({TRAIN: tx, FREEZE: optax.set_to_zero()}, labels), schedule
