"""Experiment configs: `configs/<name>.py` files with `get_config()` plus CLI overrides."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import pathlib
import sys
from collections.abc import Sequence

import ml_collections

from mmjax.errors import ConfigError


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports a config file and returns its `get_config()`.

  `path` is "configs/x.py", or "configs/x.py:ARG" for `get_config("ARG")` (a variant, e.g.
  configs/vqa_shapeworld.py:generative). The file's folder is on sys.path while it is imported,
  so a config imports the configs it derives from (`import common`); those are imported afresh
  on every call and left out of sys.modules afterwards.
  """
  text, arg = str(path), None
  if not pathlib.Path(text).is_file() and ":" in text:
    text, arg = text.rsplit(":", 1)
  path = pathlib.Path(text)
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")
  folder = str(path.resolve().parent)
  spec = importlib.util.spec_from_file_location(f"mmjax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  imported_before = set(sys.modules)
  sys.path.insert(0, folder)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"config file {str(path)!r} defines no get_config()")
    if arg is None:
      return module.get_config()
    if not inspect.signature(module.get_config).parameters:
      raise ConfigError(f"config file {str(path)!r} takes no argument, got {arg!r} after ':'")
    return module.get_config(arg)
  finally:
    sys.path.remove(folder)
    for name in set(sys.modules) - imported_before:
      if str(getattr(sys.modules[name], "__file__", None) or "").startswith(folder + os.sep):
        del sys.modules[name]


def load_run_config(workdir: str | pathlib.Path, hint: str = "") -> ml_collections.ConfigDict:
  """The config a run was trained with: `<workdir>/config.json`, as `mmjax train` writes it.

  JSON turns tuples into lists; every consumer of a config converts with `tuple(...)`.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{str(workdir)!r} has no config.json (not a `mmjax train` workdir?)"
                            + (f"; {hint}" if hint else ""))
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def save_run_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  """Writes `<workdir>/config.json` (what `load_run_config` reads back), atomically."""
  path = pathlib.Path(workdir) / "config.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name("config.json.tmp")
  tmp.write_text(json.dumps(config.to_dict(), indent=2, default=str))
  tmp.replace(path)


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """All leaf keys as dotted paths, e.g. ["batch_size", "model.image_encoder.width", ...]."""
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += flat_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def _parse_value(text: str, current):
  """Parses a CLI string into the type of the value it replaces."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if current is None or value is None:
    return value
  if isinstance(current, bool):
    if isinstance(value, bool):
      return value
    if str(text).lower() in ("true", "false", "1", "0"):
      return str(text).lower() in ("true", "1")
    raise ConfigError(f"expected a boolean, got {text!r}")
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    return tuple(value)
  if isinstance(current, str) and not isinstance(value, str):
    return text
  if type(value) is not type(current):
    raise ConfigError(f"expected a value of type {type(current).__name__}, got {text!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]
                    ) -> ml_collections.ConfigDict:
  """Applies `["model.width=256", ...]` (the text after `--config.`) to a copy of `config`.

  Unknown keys raise a ValueError listing the valid keys.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  valid = flat_keys(config)
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"config override {item!r} must look like key=value")
    key, text = item.split("=", 1)
    if key not in valid:
      raise ConfigError(f"unknown config key {key!r}; valid keys are:\n  " + "\n  ".join(valid))
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    try:
      value = _parse_value(text, node[leaf])
    except ValueError as e:
      raise ConfigError(f"bad value for config key {key!r}: {e}") from None
    with node.ignore_type():
      node[leaf] = value
  return config
