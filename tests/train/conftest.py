"""Tiny configs shared by the trainer tests (seconds per run on CPU), and one tiny trained
autoencoder run shared by the autoencoder and latent-diffusion tests."""
import pathlib

import jax
import numpy as np
import pytest

from mmjax.train.config import apply_overrides, load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "clip_shapeworld.py"

TINY = [
    "batch_size=16", "total_steps=6", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=24",
    "model.embed_dim=16", "model.image_encoder.stem_channels=(4,)",
    "model.image_encoder.patch_size=4", "model.image_encoder.width=16",
    "model.image_encoder.num_layers=1", "model.image_encoder.num_heads=2",
    "model.text_encoder.width=16", "model.text_encoder.num_layers=1",
    "model.text_encoder.num_heads=2", "optim.warmup_steps=2", "optim.learning_rate=0.01",
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
  """(config, workdir, TrainResult) of 3 tiny autoencoder steps, with the config.json `train`
  writes (latent diffusion reads the run back from its workdir)."""
  from mmjax.train.trainer import train
  workdir = tmp_path_factory.mktemp("autoencoder")
  config = tiny_autoencoder_config()
  result = train(config, workdir, devices=jax.devices()[:1], progress=False)
  return config, workdir, result


def flat_params(params):
  """{key path string: numpy array} of a params pytree, e.g. "['text_proj']['kernel']"."""
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(params)}


# The attention key bias has an exactly zero gradient (softmax ignores a shift shared by all
# keys), so Adam turns ~1e-9 reduction-order noise into updates of up to lr * g / eps ~ 1e-5;
# every other parameter of two equivalent runs agrees to float32 rounding.
ZERO_GRADIENT_SUFFIX = "['qkv']['bias']"


def assert_params_close(actual, expected, what, rtol=1e-5, atol=1e-6, zero_gradient_atol=1e-4):
  """Leaf-by-leaf `assert_allclose` of two `flat_params` dicts."""
  assert sorted(actual) == sorted(expected), f"{what}: the parameter trees differ"
  for name, value in expected.items():
    tolerance = zero_gradient_atol if name.endswith(ZERO_GRADIENT_SUFFIX) else atol
    np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=tolerance,
                               err_msg=f"{what}: {name}")
