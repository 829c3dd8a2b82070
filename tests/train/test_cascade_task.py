"""The super-resolution stage (Imagen cascade) and the coarse-to-fine refiner, without a trained
model: conditioning, noise augmentation, cascade sampling, a tiny train run, config errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax import cli, diffusion
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.diffusion import DiffusionTask, TextToImageDenoiser
from mmjax.train.tasks.superres import (SuperResolutionTask, area_downsample, load_base_stage,
                                        low_res_condition)
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "cascade_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=2", "log_every=1", "eval_every=2", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=12", "superres.low_res_size=8",
    # One level and no attention: compile time dominates, and each would double it.
    "model.unet.channels=(8,)", "model.unet.num_res_blocks=1", "model.unet.num_groups=4",
    "model.unet.attention_levels=()", "model.unet.mid_attention=False", "model.text.width=16",
    "model.text.layers=1", "model.text.heads=2", "optim.warmup_steps=1",
    "eval.batch_size=8", "eval.times=(0.2,0.8)",
    "sample.prompts=('a red circle.','a blue square.')",
    "sample.steps=2", "sample.zoom=1",
]
BASE = ["task=diffusion", "data.image_size=8"]
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(*extra):
  return apply_overrides(load_config(CONFIG), TINY + list(extra))


def _perturbed(params, seed):
  """Params moved off their zero init (conv_out starts at 0: a fresh UNet outputs exactly 0)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape)
                      .astype(np.float32), params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two tiny super-resolution steps through the one trainer, with eval and samples.png."""
  workdir = tmp_path_factory.mktemp("superres")
  config = tiny_config()
  result = train(config, workdir, devices=jax.devices()[:1], progress=False)
  return config, workdir, result


@pytest.fixture(scope="module")
def sr(trained):
  config, _, result = trained
  return SuperResolutionTask(config), _perturbed(result.state.params, 0)


@pytest.fixture(scope="module")
def base():
  """An untrained 8 px base stage with random params (built from the abstract init, no compile)."""
  task = DiffusionTask(tiny_config(*BASE))
  abstract = nn.unbox(jax.eval_shape(task.init_params, jax.random.key(0)))
  zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, np.float32), abstract)
  return task, _perturbed(zeros, 1)


def test_training_runs_evaluates_and_writes_the_superres_grid(trained):
  config, workdir, result = trained
  assert get_task_class("superres") is SuperResolutionTask
  assert set(result.eval_metrics) == {"eval_mse_t0.2", "eval_mse_t0.8", "eval_mse"}
  assert all(np.isfinite(v) and v > 0 for v in result.eval_metrics.values())
  unet = result.state.params["unet"]
  assert unet["conv_in"]["kernel"].shape[2] == 6  # x_t and the low-res image, concatenated
  assert "aug_fc1" in unet
  # 2 test images x [upsampled, SR, original] of 16 px, padding 2.
  assert Image.open(workdir / "samples.png").size == (3 * 18 + 2, 2 * 18 + 2)
  assert "super-resolution" in (workdir / "samples.txt").read_text()


def test_area_downsampling_and_noise_augmentation():
  images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  naive = images.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(area_downsample(images, 4), naive, rtol=1e-6)
  schedule = diffusion.cosine_schedule()
  up = jax.image.resize(naive, images.shape, "bilinear")
  clean = low_res_condition(schedule, images, 4, jnp.zeros(2), jax.random.key(0))
  np.testing.assert_allclose(clean["low_res"], up, atol=1e-6)  # level 0: unchanged
  levels = jnp.asarray([0.0, 0.5])
  noised = low_res_condition(schedule, images, 4, levels, jax.random.key(0))
  np.testing.assert_array_equal(noised["aug_level"], levels)
  np.testing.assert_allclose(noised["low_res"][0], up[0], atol=1e-6)
  alpha, sigma = (float(v) for v in schedule.alpha_sigma(0.5))
  residual = (np.asarray(noised["low_res"][1]) - alpha * np.asarray(up[1])) / sigma
  assert 0.7 < residual.std() < 1.3  # the augmentation noise, N(0, 1)


def test_training_condition_draws_levels_in_range(sr):
  task, _ = sr
  x0 = jnp.zeros((32, 16, 16, 3))
  levels = np.asarray(task._extra_condition(x0, jax.random.key(0), train=True)["aug_level"])
  assert 0.0 <= levels.min() and levels.max() <= 0.5 and len(np.unique(levels)) == 32
  fixed = task._extra_condition(x0, jax.random.key(0), train=False)["aug_level"]
  np.testing.assert_array_equal(fixed, np.full(32, 0.1, np.float32))


def test_sr_output_depends_on_the_low_res_image_and_the_aug_level(sr):
  task, params = sr
  tokens = task.tokenizer.encode_batch(["a red circle."] * 2, 12)
  x_t = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
  t = np.full(2, 0.5, np.float32)

  @fast_jit
  def denoise(low_res, aug_level):
    return task.model.apply({"params": params}, x_t, t, tokens, low_res=low_res,
                            aug_level=aug_level, method=TextToImageDenoiser.__call__)

  low = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  reference = np.asarray(denoise(low, np.zeros(2, np.float32)))
  assert np.abs(reference - np.asarray(denoise(-low, np.zeros(2, np.float32)))).max() > 1e-3
  assert np.abs(reference - np.asarray(denoise(low, np.full(2, 0.5, np.float32)))).max() > 1e-3


def test_cascade_shapes_determinism_and_no_recompile_for_guidance(sr, base):
  task, params = sr
  base_task, base_params = base
  run = functools.partial(task.sample_with_base, params, base_task, base_params,
                          ["a red circle.", "a blue square."], num_samples=2, steps=2,
                          sampler="ddim")
  first = run(guidance=3.0, seed=4)
  assert first.shape == (4, 16, 16, 3) and first.dtype == np.float32
  assert 0.0 <= first.min() and first.max() <= 1.0
  np.testing.assert_array_equal(first, run(guidance=3.0, seed=4))
  other = run(guidance=0.5, seed=4, aug_level=0.3)
  assert not np.allclose(first, other, atol=1e-4)
  jitted = [fn for key, fn in task._samplers.items() if key[0] == "cascade"]
  assert len(jitted) == 1 and jitted[0]._cache_size() == 1


def test_sample_superres_checks_its_inputs(sr):
  # Its outputs are the middle column of samples.png (the trained fixture).
  task, params = sr
  low = np.zeros((3, 8, 8, 3), np.float32)
  with pytest.raises(ValueError, match="one prompt per low-res image"):
    task.sample_superres(params, low, ["a red circle."] * 2, steps=2)
  with pytest.raises(ValueError, match="aug_level must be in"):
    task.sample_superres(params, low, ["a red circle."] * 3, steps=2, aug_level=1.5)
  with pytest.raises(ValueError, match=r"low_res_images must be \[N, h, w, 3\]"):
    task.sample_superres(params, low[..., :1], None, steps=2)


def test_refine_at_tiny_strength_returns_the_upsampled_coarse_image(base):
  task, params = base  # an 8 px model refining 4 px coarse images
  coarse = np.random.default_rng(4).uniform(0.2, 0.8, (2, 4, 4, 3)).astype(np.float32)
  up = np.asarray(jax.image.resize(coarse, (2, 8, 8, 3), "bilinear"))
  refined = task.refine(params, coarse, ["a red circle.", "a blue square."], strength=2e-3,
                        steps=2, guidance=3.0, sampler="ddim")
  assert refined.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(refined, up, atol=0.02)
  strong = task.refine(params, coarse, ["a red circle.", "a blue square."], strength=0.9,
                       steps=2, guidance=3.0, sampler="ddim")
  assert np.abs(strong - up).mean() > 10 * np.abs(refined - up).mean()
  refiners = [fn for key, fn in task._samplers.items() if key[0] == "refine"]
  assert len(refiners) == 1 and refiners[0]._cache_size() == 1  # strength is traced
  with pytest.raises(ValueError, match="one prompt per coarse image"):
    task.refine(params, coarse, ["a red circle."], strength=0.3)
  with pytest.raises(ValueError, match="steps=2 exceeds the 1 training timesteps"):
    task.refine(params, coarse, None, strength=1e-3, steps=2)


def test_max_train_time_restricts_the_training_times(monkeypatch):
  task = DiffusionTask(tiny_config(*BASE, "diffusion.max_train_time=0.25"))
  assert task.max_train_time == 0.25
  seen = {}
  original = diffusion.sample_train_times

  def spy(key, batch_size, schedule, max_time=1.0):
    seen["max_time"] = max_time
    return original(key, batch_size, schedule, max_time=max_time)

  monkeypatch.setattr(diffusion, "sample_train_times", spy)
  batch = {"image": np.zeros((8, 8, 8, 3), np.float32),
           "text": task.tokenizer.encode_batch(["a red circle."] * 8, 12)}
  abstract = jax.eval_shape(task.init_params, jax.random.key(0))
  jax.eval_shape(task.loss_fn, nn.unbox(abstract), batch, jax.random.key(1))
  assert seen["max_time"] == 0.25
  with pytest.raises(ValueError, match="diffusion.max_train_time must be in"):
    DiffusionTask(tiny_config(*BASE, "diffusion.max_train_time=0.0"))


@pytest.mark.parametrize("override, message", [
    ("superres.low_res_size=6", "superres.low_res_size=6 must be smaller than and divide"),
    ("superres.low_res_size=16", "superres.low_res_size=16 must be smaller"),
    ("superres.max_aug_level=1.0", r"superres.max_aug_level must be in \[0, 1\)"),
    ("superres.aug_level=-0.1", r"superres.aug_level must be in \[0, 1\)"),
])
def test_bad_superres_config_fails_clearly(override, message):
  with pytest.raises(ValueError, match=message):
    SuperResolutionTask(tiny_config(override))


def test_base_stage_errors_name_the_problem(tmp_path):
  task = SuperResolutionTask(tiny_config("cascade.base_workdir="))
  with pytest.raises(ValueError, match="cascade.base_workdir is unset"):
    task.sample(None, ["a red circle."], num_samples=1, steps=1)
  with pytest.raises(ValueError, match="unknown sampler"):
    task.sample(None, ["a red circle."], sampler="plms")  # checked before any restore
  cascade = task.config.cascade
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'none'}"]), 8)
  runs = {"superres": tiny_config(), "wrong_size": tiny_config("task=diffusion")}
  for name, config in runs.items():
    cli._save_config(config, tmp_path / name)
  with pytest.raises(ValueError, match="holds a 'superres' run, expected a 'diffusion' run"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'superres'}"]), 8)
  with pytest.raises(ValueError, match="makes 16 px images but superres.low_res_size=8"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'wrong_size'}"]), 8)
  cli._save_config(tiny_config(*BASE), tmp_path / "untrained")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'untrained'}"]), 8)
