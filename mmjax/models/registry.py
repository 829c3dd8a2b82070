"""The one way to build a model: `build_model(config.model, **from_data)`.

A model config is a dict (or `ConfigDict`) whose `name` picks a Flax module class and whose
other keys are that class's fields, spelled exactly as the fields are (big_vision's
`Model(**config.model)`):

    model = dict(name="clip", embed_dim=128, dtype="bfloat16",
                 image_encoder=dict(name="vision_transformer", patch_size=2, width=128, ...),
                 text_encoder=dict(name="text_transformer", width=128, ...))
    clip = build_model(model, text_encoder=dict(vocab_size=V, context_length=L, pad_id=0,
                                                eos_id=2))

Rules:
  name: a key of `MODELS`, or "package.module:Class" for a module registered nowhere.
  Sub-modules: a value that is itself a dict with a `name` is built by the same rules and
    passed as that field (CLIP's towers, the text-to-image denoiser's text encoder and its
    UNet or DiT, the VQA / grounding towers).
  Shared settings (`SHARED_SETTINGS`: dtype, param_dtype, attention_impl, remat,
    gelu_approximate, mlp_activation, layer_norm_epsilon): set at one level, a shared setting
    goes to that module if it has the field, and to every sub-module below that has the field
    and does not set it itself, so `model.dtype="bfloat16"` (or `model.mlp_activation=
    "quick_gelu"`) switches all towers. One that no module in its subtree has is an error.
  dtype / param_dtype: strings ("float32", "bfloat16"), resolved here (`resolve_dtype`) only.
  Values from the data or the task (vocab_size, pad_id, eos_id, context_length / max_length,
    num_answers, a denoiser's context_dim, ...) are keyword arguments of `build_model`, for a
    sub-module as a dict under its field name (above); the config must not also set them.
  Lists become tuples (a config.json round trip turns tuples into lists).
  An unknown name or key, a missing required field or a value given twice is a ValueError
    naming it (as a dotted path, e.g. model.image_encoder.widht) and what was expected.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

MODELS = {
    "audio_spectrogram_transformer": "mmjax.nn.av_encoders:AudioSpectrogramTransformer",
    "audio_visual": "mmjax.models.audio_visual:AudioVisual",
    "blip": "mmjax.models.blip:BLIP",
    "captioner": "mmjax.models.captioner:Captioner",
    "clip": "mmjax.models.clip:CLIP",
    "dit": "mmjax.nn.dit:DiT",
    "flamingo": "mmjax.models.flamingo:Flamingo",
    "kl_autoencoder": "mmjax.nn.autoencoder:KLAutoencoder",
    "ofa": "mmjax.models.ofa:OFA",
    "perceiver_resampler": "mmjax.nn.perceiver:PerceiverResampler",
    "regression_grounder": "mmjax.models.grounding:RegressionGrounder",
    "text_decoder": "mmjax.models.captioner:TextDecoder",
    "text_to_image_denoiser": "mmjax.models.text_to_image:TextToImageDenoiser",
    "text_transformer": "mmjax.nn.text:TextTransformer",
    "unet": "mmjax.nn.unet:UNet",
    "unified_decoder": "mmjax.models.unified:UnifiedDecoder",
    "video_transformer": "mmjax.nn.av_encoders:VideoTransformer",
    "vision_transformer": "mmjax.nn.vit:VisionTransformer",
    "vqa_classifier": "mmjax.models.vqa:VQAClassifier",
}
SHARED_SETTINGS = ("dtype", "param_dtype", "attention_impl", "remat", "gelu_approximate",
                   "mlp_activation", "layer_norm_epsilon")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_DTYPE_FIELDS = ("dtype", "param_dtype")
_NOT_CONFIGURABLE = ("parent", "name")  # Flax's own fields


def get_model_class(name: str) -> type[nn.Module]:
  """The module class `name` stands for: a key of `MODELS` or "package.module:Class"."""
  if not isinstance(name, str) or (name not in MODELS and ":" not in name):
    raise ValueError(f"unknown model name {name!r}; registered models are {sorted(MODELS)} "
                     "(or give 'package.module:Class')")
  module, cls = MODELS.get(name, name).split(":")
  return getattr(importlib.import_module(module), cls)


def model_fields(cls: type[nn.Module]) -> dict[str, dataclasses.Field]:
  """The configurable fields of module class `cls`, by name (Flax's parent/name excluded)."""
  return {f.name: f for f in dataclasses.fields(cls)
          if f.init and f.name not in _NOT_CONFIGURABLE}


def resolve_dtype(value: Any, key: str = "dtype") -> Any:
  """"float32" / "bfloat16" -> the jnp dtype; a non-string is returned as it is."""
  if not isinstance(value, str):
    return value
  if value not in DTYPES:
    raise ValueError(f"{key} must be one of {sorted(DTYPES)}, got {value!r}")
  return DTYPES[value]


def build_model(config: Any, **from_task: Any) -> nn.Module:
  """The module `config` describes (see the module docstring), with `from_task` values added.

  Args:
    config: `config.model`: a dict or ConfigDict with a `name`.
    **from_task: fields the data or the task determines; a dict for a sub-module's fields.
  """
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  module, _ = _build(config, from_task, {}, "model")
  return module


def _is_submodule(value: Any) -> bool:
  return isinstance(value, Mapping) and "name" in value


def _as_tuples(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuples(v) for v in value)
  return value


def _build(config: Any, from_task: Mapping[str, Any], inherited: Mapping[str, Any], path: str
           ) -> tuple[nn.Module, set[str]]:
  """(module, the inherited shared settings it or a sub-module took) for `config` at `path`."""
  if not _is_submodule(config):
    raise ValueError(f"{path} must be a dict with a 'name' (one of {sorted(MODELS)}), got "
                     f"{config!r}")
  config = dict(config)
  cls = get_model_class(config.pop("name"))
  fields = model_fields(cls)
  valid = f"{cls.__name__}'s fields are {sorted(fields)}"
  for key in _DTYPE_FIELDS:
    if key in config:
      config[key] = resolve_dtype(config[key], f"{path}.{key}")
  local_shared = {k: v for k, v in config.items() if k in SHARED_SETTINGS}
  below = {**inherited, **local_shared}
  kwargs, taken = {}, set()
  from_task = dict(from_task)
  for key, value in config.items():
    if key not in fields:
      if key in local_shared:
        continue  # Only for the sub-modules; checked below.
      raise ValueError(f"unknown config key {path}.{key}: {valid} (plus 'name')")
    if key in from_task and not _is_submodule(value):
      raise ValueError(f"{path}.{key} comes from the data or task ({from_task[key]!r}); remove "
                       "it from the config")
    if _is_submodule(value):
      value, sub_taken = _build(value, from_task.pop(key, {}), below, f"{path}.{key}")
      taken |= sub_taken
    kwargs[key] = value
  for key, value in from_task.items():
    if key not in fields:
      raise ValueError(f"{path}.{key} was given by the task but is not a field: {valid}")
    if isinstance(value, Mapping):
      raise ValueError(f"the task gave values for a sub-module {path}.{key}, but the config "
                       f"has no {path}.{key} with a 'name'")
    kwargs[key] = value
  for key, value in inherited.items():
    if key in fields and key not in kwargs:
      kwargs[key] = value
      taken.add(key)
  unused = [k for k in local_shared if k not in fields and k not in taken]
  if unused:
    raise ValueError(f"shared setting {path}.{unused[0]} reaches no module: {cls.__name__} has "
                     "no such field and its sub-modules lack it or set their own")
  missing = sorted(k for k, f in fields.items() if k not in kwargs
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING)
  if missing:
    raise ValueError(f"{path} ({cls.__name__}) needs {missing}: set them in the config (or, "
                     "for values from the data, the task must pass them)")
  kwargs = {k: v if isinstance(v, nn.Module) else _as_tuples(v) for k, v in kwargs.items()}
  return cls(**kwargs), taken - set(local_shared)
