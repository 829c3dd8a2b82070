"""Warm start: copy parameter subtrees of another trained run into a new run's fresh params.

Config section (off when `workdir` is empty):

    c.init_from = ml_collections.ConfigDict(dict(
        workdir="runs/clip",              # a finished (or running) run with checkpoints
        config="",                        # its config file; "" = the workdir's config.json
        step=-1,                          # checkpoint step; -1 = the latest
        params=("image_encoder:image_encoder",)))   # "source/path:target/path" pairs

Several sources (Flamingo: its LM from a language-model run, its vision tower from a CLIP run)
are named sub-sections, each of the form above, applied in the order of their names (a
ConfigDict keeps its keys sorted):

    c.init_from = ml_collections.ConfigDict(dict(
        lm=ml_collections.ConfigDict(dict(workdir="runs/lm", config="", step=-1,
                                          params=("transformer:transformer", ...))),
        vision=ml_collections.ConfigDict(dict(workdir="runs/clip", config="", step=-1,
                                              params=("image_encoder:vision_encoder",)))))

Each pair names a subtree by its '/'-separated keys in the source run's params and in this
run's params; the two must have the same keys, shapes and dtypes (an error lists what
differs). Only a fresh run is warm-started: a resumed run restores its own checkpoint.

A source may list `extend=("token_embed", "lm_head")`: target paths under which a leaf may be
larger than the source's along one axis (a vocabulary grown by new tokens, e.g. location bins
after a text LM's words). The source's values fill the leading slice of that axis; the rest
keeps this run's initialisation, so new rows must be trained (name them in
`optim.trainable`).

Instead of a run, `checkpoint="ViT-B-32.safetensors"` names a public open_clip / OpenAI CLIP
state dict, converted by `mmjax.convert.load_clip` (`quick_gelu` as there: None decides from
the file); its params have CLIP's keys (image_encoder, text_encoder, image_proj, text_proj,
logit_scale). `configs/clip_finetune.py` builds the matching model from the file's shapes.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.train.restore import restore_params

PyTree = Any


def parse_mapping(item: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """"image_encoder:vision/encoder" -> (("image_encoder",), ("vision", "encoder"))."""
  parts = str(item).split(":")
  if len(parts) != 2 or not all(p.strip("/") for p in parts):
    raise ValueError(f"init_from.params entries look like 'source/path:target/path', got {item!r}")
  return tuple(tuple(k for k in p.strip("/").split("/")) for p in parts)


def get_subtree(params: PyTree, path: tuple[str, ...], what: str) -> PyTree:
  """The subtree of nested dict `params` at `path`; KeyError naming the keys that exist."""
  node = params
  for depth, key in enumerate(path):
    if not hasattr(node, "keys") or key not in node:
      where = "/".join(path[:depth]) or "<root>"
      have = sorted(node.keys()) if hasattr(node, "keys") else "a leaf"
      raise KeyError(f"{what} params have no {'/'.join(path)!r}: under {where!r} there is {have}")
    node = node[key]
  return node


def set_subtree(params: PyTree, path: tuple[str, ...], value: PyTree) -> PyTree:
  """A copy of nested dict `params` with the subtree at `path` replaced by `value`."""
  if not path:
    return value
  head, rest = path[0], path[1:]
  copied = dict(params)
  copied[head] = set_subtree(params[head], rest, value)
  return copied


def check_same_structure(source: PyTree, target: PyTree, mapping: str) -> None:
  """Raises ValueError listing the leaves whose path, shape or dtype differ."""
  flat_source = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}
  flat_target = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(target)}
  problems = [f"{k}: only in the source" for k in sorted(set(flat_source) - set(flat_target))]
  problems += [f"{k}: only in this run" for k in sorted(set(flat_target) - set(flat_source))]
  for key in sorted(set(flat_source) & set(flat_target)):
    s, t = flat_source[key], flat_target[key]
    if s.shape != t.shape or s.dtype != t.dtype:
      problems.append(f"{key}: source {s.dtype}{list(s.shape)} vs this run {t.dtype}{list(t.shape)}")
  if problems:
    shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
    raise ValueError(f"init_from.params {mapping!r}: the subtrees differ ({shown}); the source "
                     "run must have the same architecture for this part")


def extended_leaves(source: PyTree, target: PyTree, mapping: str) -> PyTree:
  """`source` with each leaf smaller than `target`'s along exactly one axis (same rank and
  dtype) written into the leading slice of that axis of `target`'s leaf; other leaves as they
  are (`check_same_structure` then judges them). A leaf larger than the target's, or one that
  differs along several axes, is a ValueError naming it."""
  flat_target = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(target)}

  def grow(path, s):
    key = jax.tree_util.keystr(path)
    t = flat_target.get(key)
    if t is None or s.shape == t.shape or s.ndim != t.ndim or s.dtype != t.dtype:
      return s
    differ = [axis for axis in range(s.ndim) if s.shape[axis] != t.shape[axis]]
    if len(differ) != 1 or s.shape[differ[0]] > t.shape[differ[0]]:
      raise ValueError(f"init_from.params {mapping!r}: {key} is {list(s.shape)} in the source "
                       f"and {list(t.shape)} here; `extend` grows one axis, smaller in the "
                       "source, and no other")
    leading = tuple(slice(0, n) for n in s.shape)
    return jnp.asarray(t).at[leading].set(s)

  return jax.tree_util.tree_map_with_path(grow, source)


def source_config(init_from: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The source run's config: `init_from.config` if set, else `<workdir>/config.json`."""
  from mmjax.train.config import load_config, load_run_config
  if init_from.get("config"):
    return load_config(init_from.config)
  return load_run_config(init_from.workdir, "set init_from.config to the config file the "
                         "source run was trained with")


def _is_source(section: Any) -> bool:
  return hasattr(section, "get") and ("workdir" in section or "checkpoint" in section)


def active_sources(init_from: ml_collections.ConfigDict | None) -> list[ml_collections.ConfigDict]:
  """The sources of `init_from` that name a run or a checkpoint (a single-source section, or
  its named sub-sections in name order); [] when warm start is off."""
  if init_from is None:
    return []
  if _is_source(init_from):
    sections = [init_from]
  else:
    sections = [init_from[key] for key in init_from]
    bad = [key for key, section in zip(init_from, sections) if not _is_source(section)]
    if bad:
      raise ValueError(f"init_from.{bad[0]} is neither a source (workdir / checkpoint, params) "
                       "nor does init_from itself name one; see mmjax/train/warm_start.py")
  return [section for section in sections
          if section.get("workdir") or section.get("checkpoint")]


def warm_start(params: PyTree, init_from: ml_collections.ConfigDict, mesh,
               param_shardings: PyTree) -> tuple[PyTree, list[str]]:
  """Returns `params` with the mapped subtrees taken from every active source of `init_from`.

  Args:
    params: this run's freshly initialised params (nested dicts of arrays).
    init_from: the config section described in the module docstring.
    mesh: this run's mesh; the source checkpoint is restored onto its devices.
    param_shardings: shardings of `params` (same tree); copied subtrees are placed with them.
  Returns:
    (new params, one line per copied subtree saying what came from where).
  """
  lines = []
  for source in active_sources(init_from):
    params, source_lines = _warm_start_from(params, source, mesh, param_shardings)
    lines += source_lines
  return params, lines


def _warm_start_from(params: PyTree, init_from: ml_collections.ConfigDict, mesh,
                     param_shardings: PyTree) -> tuple[PyTree, list[str]]:
  """`warm_start` from one source section."""
  mappings = [parse_mapping(item) for item in init_from.params]
  if not mappings:
    raise ValueError("init_from is set but init_from.params names no subtree to copy")
  if init_from.get("checkpoint") and init_from.get("workdir"):
    raise ValueError("set init_from.workdir (a trained run) or init_from.checkpoint (a public "
                     "CLIP file), not both")
  if init_from.get("checkpoint"):
    from mmjax.convert import load_clip
    _, source_params = load_clip(init_from.checkpoint, quick_gelu=init_from.get("quick_gelu"))
    origin, source_step = init_from.checkpoint, "(converted)"
  else:
    step = init_from.get("step", -1)
    source = restore_params(source_config(init_from), init_from.workdir,
                            step=None if step is None or step < 0 else int(step),
                            devices=mesh.devices.flatten())
    source_params, origin, source_step = source.params, init_from.workdir, f"step {source.step}"
  extend = [tuple(p.strip("/").split("/")) for p in init_from.get("extend", ())]
  lines = []
  for item, (source_path, target_path) in zip(init_from.params, mappings):
    copied = get_subtree(source_params, source_path, f"the source's ({origin})")
    target = get_subtree(params, target_path, "this run's")
    count = sum(x.size for x in jax.tree.leaves(copied))
    if any(target_path[:len(prefix)] == prefix for prefix in extend):
      copied = extended_leaves(copied, target, item)
    check_same_structure(copied, target, item)
    placed = jax.device_put(copied, get_subtree(param_shardings, target_path, "this run's"))
    params = set_subtree(params, target_path, placed)
    lines.append(f"warm start: {'/'.join(target_path)} <- {origin} {source_step} "
                 f"{'/'.join(source_path)} ({count:,} values)")
  return params, lines
