"""Task registry: `config.task` names one of these."""
from __future__ import annotations

import importlib

_TASKS = {
    "audio_visual": "mmjax.train.tasks.audio_visual:AudioVisualTask",
    "autoencoder": "mmjax.train.tasks.autoencoder:AutoencoderTask",
    "blip": "mmjax.train.tasks.blip:BLIPTask",
    "captioning": "mmjax.train.tasks.captioning:CaptionTask",
    "contrastive": "mmjax.train.tasks.contrastive:ContrastiveTask",
    "diffusion": "mmjax.train.tasks.diffusion:DiffusionTask",
    "grounding": "mmjax.train.tasks.grounding:GroundingTask",
    "interleaved": "mmjax.train.tasks.interleaved:InterleavedTask",
    "language_model": "mmjax.train.tasks.language_model:LanguageModelTask",
    "multitask": "mmjax.train.tasks.multitask:MultiTask",
    "superres": "mmjax.train.tasks.superres:SuperResolutionTask",
    "vqa": "mmjax.train.tasks.vqa:VQATask",
}


def get_task_class(name: str):
  """The Task class registered as `name`, or named "package.module:Class" (imported lazily)."""
  if not isinstance(name, str) or (name not in _TASKS and ":" not in name):
    raise ValueError(f"unknown task {name!r}; registered tasks are {sorted(_TASKS)} (or give "
                     "'package.module:Class')")
  module, cls = _TASKS.get(name, name).split(":")
  return getattr(importlib.import_module(module), cls)
