"""The super-resolution stage (Imagen cascade) and the coarse-to-fine refiner, without a trained
model: conditioning, noise augmentation, cascade sampling, a tiny train run, config errors."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax import diffusion
from mmjax.models.text_to_image import TextToImageDenoiser
from mmjax.train.config import apply_overrides, load_config, save_run_config
from mmjax.train.tasks import get_task_class
from mmjax.train.tasks.diffusion import DiffusionTask
from mmjax.train.tasks.superres import (SuperResolutionTask, area_downsample, load_base_stage,
                                        low_res_condition)
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = ROOT / "configs" / "cascade_shapeworld.py"
TINY = [
    "batch_size=8", "total_steps=2", "log_every=1", "eval_every=2", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=12", "superres.low_res_size=8",
    # One level and no attention: compile time dominates, and each would double it.
    "model.denoiser.channels=(8,)", "model.denoiser.num_res_blocks=1",
    "model.denoiser.num_groups=4", "model.denoiser.attention_levels=()",
    "model.denoiser.mid_attention=False", "model.text.width=16",
    "model.text.num_layers=1", "model.text.num_heads=2", "optim.warmup_steps=1",
    "eval.batch_size=8", "eval.times=(0.2,0.8)",
    "sample.prompts=('a red circle.','a blue square.')",
    "sample.steps=2", "sample.zoom=1",
    # The hand-written guided DDIM below is in eps form.
    "diffusion.prediction=eps",
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
  unet = result.state.params["denoiser"]
  assert unet["conv_in"]["kernel"].shape[2] == 6  # x_t and the low-res image, concatenated
  assert "aug_fc1" in unet
  # 2 test images x [upsampled, SR, original] of 16 px, padding 2.
  assert Image.open(workdir / "samples.png").size == (3 * 18 + 2, 2 * 18 + 2)
  assert "super-resolution" in (workdir / "samples.txt").read_text()


def _cosine_alpha_sigma_np(t):
  """alpha, sigma of cosine_schedule() at grid times t (Nichol & Dhariwal's f(t) / f(0))."""
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  alpha_bar = f(np.asarray(t, np.float64)) / f(0.0)
  return np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)


def test_area_downsampling_and_noise_augmentation():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  naive = np.zeros((3, 4, 4, 3))
  for i, j in np.ndindex(4, 4):
    naive[:, i, j] = images[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(area_downsample(images, 4), naive, rtol=1e-6, atol=1e-7)
  # The closed form: x_t = alpha(level) up + sigma(level) noise, q(x_t | x_0) at the
  # augmentation level, x_0 the bilinear upsampling of the block means, noise drawn with key.
  schedule = diffusion.cosine_schedule()
  levels = np.array([0.0, 0.25, 0.5], np.float32)
  key = jax.random.key(0)
  condition = jax.jit(low_res_condition, static_argnums=2)  # one compile, not one per op
  got = condition(schedule, images, 4, jnp.asarray(levels), key)
  up = np.asarray(jax.image.resize(naive, images.shape, "bilinear"))
  noise = np.asarray(jax.random.normal(key, images.shape, jnp.float32))
  alpha, sigma = (v[:, None, None, None] for v in _cosine_alpha_sigma_np(levels))
  np.testing.assert_allclose(got["low_res"], alpha * up + sigma * noise, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got["aug_level"], levels)
  # Its statistics: (x_t - alpha up) / sigma is standard normal, whatever the image.
  big = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  noised = condition(schedule, big, 8, jnp.full((4,), 0.5), jax.random.key(1))
  up = np.asarray(jax.image.resize(area_downsample(big, 8), big.shape, "bilinear"))
  alpha, sigma = (float(v[0]) for v in _cosine_alpha_sigma_np([0.5]))
  residual = ((np.asarray(noised["low_res"]) - alpha * up) / sigma).ravel()
  n = residual.size  # 12288: standard errors 0.009 (mean) and 0.0064 (std)
  assert abs(residual.mean()) < 4 / np.sqrt(n), residual.mean()
  assert abs(residual.std() - 1.0) < 4 / np.sqrt(2 * n), residual.std()
  assert abs(np.corrcoef(residual, up.ravel())[0, 1]) < 4 / np.sqrt(n)


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


_NETWORKS = {}


def _guided_ddim_by_hand(task, params, tokens, x, times, guidance, **denoiser_inputs):
  """Two-call classifier-free guidance around the null context and DDIM with x0 clipped to
  [-1, 1], written out step by step; the network is the only thing taken from the task."""
  model = task.model
  if id(model) not in _NETWORKS:  # one compile per model and shape, shared by the tests
    _NETWORKS[id(model)] = fast_jit(lambda p, *args, **kw: model.apply(
        {"params": p}, *args, **kw, method=TextToImageDenoiser.denoise))
  denoise = _NETWORKS[id(model)]
  context, mask = model.apply({"params": params}, tokens, method=TextToImageDenoiser.encode_text)
  null = np.broadcast_to(params["null_context"][:tokens.shape[1]], context.shape)
  all_true = np.ones(mask.shape, bool)
  alphas, sigmas = (np.asarray(v, np.float64) for v in task.schedule.alpha_sigma(times))
  for i in range(len(times) - 1):
    t = np.full(len(x), times[i], np.float32)
    x32 = x.astype(np.float32)
    eps_cond = np.asarray(denoise(params, x32, t, context, mask, **denoiser_inputs), np.float64)
    eps_null = np.asarray(denoise(params, x32, t, null, all_true, **denoiser_inputs), np.float64)
    eps = eps_null + guidance * (eps_cond - eps_null)
    x0 = np.clip((x - sigmas[i] * eps) / alphas[i], -1.0, 1.0)
    x = alphas[i + 1] * x0 + sigmas[i + 1] * (x - alphas[i] * x0) / sigmas[i]
  return x


def test_cascade_matches_guided_ddim_by_hand_and_never_recompiles(sr, base):
  task, params = sr
  base_task, base_params = base
  prompts = ["a red circle.", "a blue square."]
  run = functools.partial(task.sample_with_base, params, base_task, base_params, prompts,
                          num_samples=2, steps=2, sampler="ddim")
  got = run(guidance=3.0, seed=4)
  assert got.shape == (4, 16, 16, 3) and got.dtype == np.float32
  # The reference: per stage the keys (noise, aug, _) of sample_cascade's split of the seed;
  # the base sample is upsampled, noised to superres.aug_level (0.1) and given to the SR
  # UNet with its level; both stages run 2 DDIM steps on t = 1, 0.5, 0.
  tokens = task.tokenizer.encode_batch(prompts, 12).repeat(2, axis=0)
  key, base_noise, _, _ = jax.random.split(jax.random.key(4), 4)
  _, sr_noise, aug_key, _ = jax.random.split(key, 4)
  times = np.array([1.0, 0.5, 0.0])
  low = _guided_ddim_by_hand(base_task, base_params, tokens,
                             np.asarray(jax.random.normal(base_noise, (4, 8, 8, 3))), times, 3.0)
  up = np.asarray(jax.image.resize(low.astype(np.float32), (4, 16, 16, 3), "bilinear"))
  alpha, sigma = (float(v[0]) for v in _cosine_alpha_sigma_np([0.1]))
  low_res = alpha * up + sigma * np.asarray(jax.random.normal(aug_key, up.shape))
  high = _guided_ddim_by_hand(task, params, tokens,
                              np.asarray(jax.random.normal(sr_noise, (4, 16, 16, 3))), times,
                              3.0, low_res=low_res.astype(np.float32),
                              aug_level=np.full(4, 0.1, np.float32))
  np.testing.assert_allclose(got, np.clip((high + 1) / 2, 0, 1), atol=2e-4)
  other = run(guidance=0.5, seed=4, aug_level=0.3)
  assert not np.allclose(got, other, atol=1e-4)
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


def test_refine_matches_guided_ddim_by_hand_from_the_noised_upsampled_image(base):
  task, params = base  # an 8 px model refining 4 px coarse images
  prompts = ["a red circle.", "a blue square."] * 2
  coarse = np.random.default_rng(4).uniform(0.2, 0.8, (4, 4, 4, 3)).astype(np.float32)
  refine = functools.partial(task.refine, params, coarse, prompts, steps=2, guidance=3.0,
                             sampler="ddim")
  # img2img by hand: upsample in [-1, 1], noise to the grid time nearest the strength with
  # the first half of the seed's key, 2 DDIM steps on the training grid (T = 1000).
  up = np.asarray(jax.image.resize(2 * coarse - 1, (4, 8, 8, 3), "bilinear"), np.float64)
  noise = np.asarray(jax.random.normal(jax.random.split(jax.random.key(0))[0], up.shape))
  tokens = task.tokenizer.encode_batch(prompts, 12)
  # At 1e-3 the 2-step grid repeats a time: the repeat is an identity (one DDIM step moves).
  for strength, times in ((0.3, [0.3, 0.15, 0.0]), (2e-3, [0.002, 0.001, 0.0]),
                          (1e-3, [0.001, 0.0])):
    alpha, sigma = (float(v[0]) for v in _cosine_alpha_sigma_np(times[:1]))
    x0 = _guided_ddim_by_hand(task, params, tokens, alpha * up + sigma * noise,
                              np.array(times), 3.0)
    np.testing.assert_allclose(refine(strength=strength), np.clip((x0 + 1) / 2, 0, 1),
                               atol=2e-4)
  refiners = [fn for key, fn in task._samplers.items() if key[0] == "refine"]
  assert len(refiners) == 1 and refiners[0]._cache_size() == 1  # strength is traced
  with pytest.raises(ValueError, match="one prompt per coarse image"):
    task.refine(params, coarse, ["a red circle."], strength=0.3)


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
    save_run_config(config, tmp_path / name)
  with pytest.raises(ValueError, match="holds a 'superres' run, expected a 'diffusion' run"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'superres'}"]), 8)
  with pytest.raises(ValueError, match="makes 16 px images but superres.low_res_size=8"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'wrong_size'}"]), 8)
  save_run_config(tiny_config(*BASE), tmp_path / "untrained")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    load_base_stage(apply_overrides(cascade, [f"base_workdir={tmp_path / 'untrained'}"]), 8)
