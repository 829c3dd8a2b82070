"""A tiny CLIP config shared by the trainer tests (seconds per run on CPU)."""
import pathlib

import pytest

from mmjax.train.config import apply_overrides, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "clip_shapeworld.py"

TINY = [
    "batch_size=16", "total_steps=6", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=24",
    "model.embed_dim=16", "model.image.stem_channels=(4,)", "model.image.patch_size=4",
    "model.image.width=16",
    "model.image.layers=1", "model.image.heads=2", "model.text.width=16", "model.text.layers=1",
    "model.text.heads=2", "optim.warmup_steps=2", "optim.learning_rate=0.01",
    "eval.zero_shot_images=16", "eval.retrieval_images=8", "eval.batch_size=8",
]


def tiny_config(*extra):
  return apply_overrides(load_config(CONFIG), TINY + list(extra))


@pytest.fixture
def tiny():
  return tiny_config
