"""Tiny configs shared by the trainer tests (seconds per run on CPU), and one tiny trained
autoencoder run shared by the autoencoder and latent-diffusion tests."""
import pathlib

import jax
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


AUTOENCODER_TINY = [
    "batch_size=8", "total_steps=3", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "model.channels=(4,8)", "model.num_groups=4", "model.mid_attention=False",
    "optim.warmup_steps=1", "optim.learning_rate=0.003", "eval.num_images=8",
    "artifacts.num_images=4", "artifacts.zoom=1",
]


def tiny_autoencoder_config(*extra):
  return apply_overrides(load_config(ROOT / "configs" / "autoencoder_shapeworld.py"),
                         AUTOENCODER_TINY + list(extra))


@pytest.fixture(scope="session")
def trained_autoencoder(tmp_path_factory):
  """(config, workdir, TrainResult) of 3 tiny autoencoder steps, with config.json as `mmjax
  train` writes it (latent diffusion reads the run back from its workdir)."""
  from mmjax import cli
  from mmjax.train.trainer import train
  workdir = tmp_path_factory.mktemp("autoencoder")
  config = tiny_autoencoder_config()
  result = train(config, workdir, devices=jax.devices()[:1], progress=False)
  cli._save_config(config, workdir)
  return config, workdir, result
