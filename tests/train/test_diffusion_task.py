"""The diffusion task through the one trainer, and `mmjax sample` on a tiny trained workdir."""
import functools
import time

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from PIL import Image

from mmjax import cli, diffusion
from mmjax.train import sharding
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks.autoencoder import AutoencoderTask
from mmjax.train.plots import save_image_grid
from mmjax.train.tasks.diffusion import DiffusionTask
from mmjax.train.trainer import train

from conftest import ROOT

CONFIG = f"{ROOT / 'configs' / 't2i_shapeworld.py'}:unet"
TINY = [
    "batch_size=8", "total_steps=4", "log_every=1", "eval_every=1000", "checkpoint_every=1000",
    "data.image_size=16", "data.context_length=12",
    "model.denoiser.channels=(8,16)", "model.denoiser.num_res_blocks=1",
    "model.denoiser.num_groups=4", "model.denoiser.num_heads=2", "model.denoiser.mid_attention=False", "model.text.width=16",
    "model.text.num_layers=1", "model.text.num_heads=2",
    "optim.warmup_steps=1", "optim.learning_rate=0.003",
    "eval.batch_size=8", "eval.times=(0.2,0.8)",
    "sample.num_per_prompt=2", "sample.steps=3", "sample.zoom=1",
]
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
SAMPLE_FLAGS = ["--num-samples", "2", "--steps", "3"]


def tiny_config(*extra):
  return apply_overrides(load_config(CONFIG), TINY + list(extra))


def _losses(workdir):
  return np.array([r["loss"] for r in read_jsonl(workdir / "train.jsonl")])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 1-device tiny run with eval, checkpoint and the end-of-run sample grid."""
  workdir = tmp_path_factory.mktemp("ddpm")
  config = tiny_config("eval_every=4", "checkpoint_every=4")
  began = time.perf_counter()
  result = train(config, workdir, devices=jax.devices()[:1], progress=False)
  result.wall_s = time.perf_counter() - began
  return config, workdir, result


def test_training_runs_evaluates_and_writes_samples(trained):
  config, workdir, result = trained
  losses = _losses(workdir)
  assert len(losses) == 4 and np.all(np.isfinite(losses)) and np.all(losses > 0)
  # wall_s: seconds since train() began, rising, within the call's own measured duration.
  wall = [r["wall_s"] for r in read_jsonl(workdir / "train.jsonl")]
  assert 0 < wall[0] and np.all(np.diff(wall) > 0) and wall[-1] <= result.wall_s, wall
  assert set(result.eval_metrics) == {"eval_mse_t0.2", "eval_mse_t0.8", "eval_mse"}
  assert all(np.isfinite(v) and v > 0 for v in result.eval_metrics.values())
  # conv_out and every ResBlock's conv2 start at exactly zero (unet.py): training moved them.
  unet = result.state.params["denoiser"]
  assert np.abs(np.asarray(unet["conv_out"]["kernel"])).max() > 0
  assert np.abs(np.asarray(unet["down_0_res_0"]["conv2"]["kernel"])).max() > 0
  assert np.isfinite(np.asarray(result.state.params["null_context"])).all()
  # 4 prompts x 2 samples of 16 px, padding 2: width 2 * 18 + 2, height 4 * 18 + 2.
  assert Image.open(workdir / "samples.png").size == (38, 74)
  assert (workdir / "loss.png").exists()


def test_eval_is_deterministic_and_matches_a_recompute(trained):
  config, _, result = trained
  task = DiffusionTask(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  params = result.state.params
  first, second = task.evaluate(params, mesh), task.evaluate(params, mesh)
  assert first == second
  # Independent recompute of the t = 0.8 MSE (the config's v prediction) by plain numpy.
  assert config.diffusion.prediction == "v"
  data = task._eval_data()
  alpha, sigma = (float(v) for v in task.schedule.alpha_sigma(np.float32(0.8)))
  x0 = 2.0 * data["image"] - 1.0
  x_t = alpha * x0 + sigma * data["noise"]
  v_target = alpha * data["noise"] - sigma * x0
  forward = jax.jit(lambda p, x, tokens: task._denoise_fn(p)(
      x, np.full(8, 0.8, np.float32), **task._condition(p, tokens)[0]))
  out = np.asarray(forward(params, x_t.astype(np.float32), data["text"]))
  np.testing.assert_allclose(first["eval_mse_t0.8"], np.mean((out - v_target) ** 2),
                             rtol=1e-4)


def test_eight_device_mesh_shards_params_and_gives_the_same_loss(trained):
  """The UNet and text tower's logical axes shard them; the sharded loss equals 1 device's.

  (The trainer's 8-device loss trajectories are tested with CLIP in test_sharding.py; compiling
  this task's whole train step again for 8 devices would cost ~100 s of the suite.)
  """
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 CPU devices"
  config, _, result = trained
  task = DiffusionTask(config)
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  abstract = jax.eval_shape(task.init_params, jax.random.key(0))
  shardings = sharding.logical_shardings(abstract, mesh)
  specs = {jax.tree_util.keystr(path): s.spec for path, s in
           jax.tree_util.tree_leaves_with_path(shardings)}
  sharded = [name for name, spec in specs.items() if "fsdp" in jax.tree.leaves(tuple(spec))]
  assert any("denoiser" in name and "conv" in name for name in sharded), sorted(specs)[:10]
  assert any("text" in name for name in sharded)
  params = jax.device_put(result.state.params, shardings)
  batch = next(task.train_batches(0, 1))
  loss = jax.jit(lambda p, b: task.loss_fn(p, b, jax.random.key(1))[0])
  single = loss(result.state.params, batch)
  spread = loss(params, sharding.host_batch_to_global(batch, mesh))
  np.testing.assert_allclose(float(spread), float(single), rtol=1e-5)


def test_guidance_zero_is_the_unconditional_sample(trained):
  config, _, result = trained
  task = DiffusionTask(config)
  guided = task.sample(result.state.params, ["a large red circle."], num_samples=2, steps=3,
                       guidance=0.0, sampler="ddim", seed=5)
  uncond = task.sample(result.state.params, None, num_samples=2, steps=3, sampler="ddim", seed=5)
  cond = task.sample(result.state.params, ["a large red circle."], num_samples=2, steps=3,
                     guidance=1.0, sampler="ddim", seed=5)
  assert guided.shape == (2, 16, 16, 3) and 0.0 <= guided.min() and guided.max() <= 1.0
  np.testing.assert_allclose(guided, uncond, atol=1e-5)
  assert not np.allclose(cond, uncond, atol=1e-4), "the text condition has no effect"


def test_cli_sample_writes_a_png(trained, tmp_path):
  _, workdir, _ = trained
  out = tmp_path / "grid.png"
  code = cli.main(["sample", "--config", str(CONFIG), "--workdir", str(workdir),
                   "--prompt", "a large red circle", "--prompt", "a small blue square",
                   *SAMPLE_FLAGS, "--sampler", "dpmpp_2m", "--guidance", "2.0",
                   "--out", str(out), *[f"--config.{o}" for o in TINY]])
  assert code == 0
  assert Image.open(out).size == (2 * 18 + 2, 2 * 18 + 2)


def test_cli_sample_errors(trained, tmp_path, capsys):
  _, workdir, _ = trained
  base = ["sample", "--config", str(CONFIG), "--prompt", "a red circle", *SAMPLE_FLAGS,
          *[f"--config.{o}" for o in TINY]]
  assert cli.main(base + ["--workdir", str(workdir), "--sampler", "plms",
                          "--out", str(tmp_path / "x.png")]) == 2
  assert "unknown sampler 'plms'" in capsys.readouterr().err
  empty = tmp_path / "empty"
  assert cli.main(base + ["--workdir", str(empty)]) == 2
  assert "no checkpoint" in capsys.readouterr().err
  assert not empty.exists()
  clip = ROOT / "configs" / "clip_shapeworld.py"
  assert cli.main(["sample", "--config", str(clip), "--workdir", str(workdir), "--prompt",
                   "a red circle"]) == 2
  assert "cannot sample" in capsys.readouterr().err


def test_bad_batches_and_config_fail_clearly():
  task = DiffusionTask(tiny_config())
  good = {"image": np.zeros((8, 16, 16, 3), np.float32),
          "text": np.ones((8, 12), np.int32)}
  task.check_batch(good, 0)
  with pytest.raises(ValueError, match=r"image has shape \(8, 32, 32, 3\)"):
    task.check_batch({**good, "image": np.zeros((8, 32, 32, 3), np.float32)}, 3)
  with pytest.raises(ValueError, match="empty text"):
    task.check_batch({**good, "text": np.zeros((8, 12), np.int32)}, 3)
  with pytest.raises(ValueError, match="diffusion.schedule"):
    DiffusionTask(tiny_config("diffusion.schedule=sigmoid"))
  with pytest.raises(ValueError, match="unknown sampler"):
    task.sample(None, ["a red circle"], sampler="plms")
  with pytest.raises(ValueError, match="prompt 'zebra okapi' has no word the model knows"):
    task.sample(None, ["a red circle", "zebra okapi"])
  with pytest.raises(ValueError, match=r"model.denoiser must be a dict whose name is one of "
                                       r"\('unet', 'dit'\), got 'vit'"):
    DiffusionTask(tiny_config("model.denoiser.name=vit"))


def test_dit_denoiser_trains_through_the_task():
  """`model.denoiser.name=dit` builds a DiT inside the same task; its loss falls on one batch."""
  config = load_config(ROOT / "configs" / "t2i_shapeworld.py")
  config = apply_overrides(config, [
      "data.image_size=16", "data.context_length=12", "model.denoiser.width=32",
      "model.denoiser.num_layers=2", "model.denoiser.num_heads=2", "model.text.width=16",
      "model.text.num_layers=1", "model.text.num_heads=2", "diffusion.cfg_dropout=0.0"])
  task = DiffusionTask(config)
  params = nn.unbox(fast_jit(task.init_params)(jax.random.key(0)))
  assert set(params["denoiser"]) >= {"patch_embed", "transformer", "final_proj", "pooled_text"}
  assert params["denoiser"]["patch_embed"]["kernel"].shape == (4 * 4 * 3, 32)
  batch = next(task.train_batches(0, 1))
  batch = {k: v[:8] for k, v in batch.items()}
  optimizer = optax.adam(3e-3)
  grad_fn = fast_jit(jax.value_and_grad(lambda p: task.loss_fn(p, batch, jax.random.key(1))[0]))
  state, losses = optimizer.init(params), []
  for _ in range(30):
    loss, grads = grad_fn(params)
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    losses.append(float(loss))
  # Same rng every step: the same noise and times, so the loss is a fixed function to fit.
  assert losses[-1] < 0.5 * losses[0], losses


def test_image_grid_layout(tmp_path):
  images = np.random.default_rng(0).uniform(size=(5, 4, 6, 3)).astype(np.float32)
  path = save_image_grid(tmp_path / "g.png", images, columns=2, zoom=3, padding=1)
  grid = np.asarray(Image.open(path))
  assert grid.shape == (3 * 13 + 1, 2 * 19 + 1, 3)
  # Image 3 is row 1, column 1; each pixel repeated 3 x 3.
  np.testing.assert_array_equal(grid[14:26, 20:38], np.round(images[3] * 255).astype(np.uint8)
                                .repeat(3, 0).repeat(3, 1))


def test_latent_diffusion_on_a_trained_autoencoder(trained_autoencoder):
  """ldm_shapeworld: the UNet sees the frozen autoencoder's scaled latents; samples decode."""
  ae_config, ae_dir, ae = trained_autoencoder
  config = apply_overrides(load_config(ROOT / "configs" / "ldm_shapeworld.py"),
                           TINY + [f"autoencoder.workdir={ae_dir}", "autoencoder.scale_images=16"])
  task = DiffusionTask(config)
  space = task.space
  assert space.shape == (8, 8, 4)  # 16 px / factor 2, 4 latent channels
  # The scaling factor is 1 / std of posterior samples of the first 16 training images.
  ae_task = AutoencoderTask(ae_config)
  ae_apply = fast_jit(ae_task.model.apply, static_argnames="method")
  images = np.stack([task._source("train", 16)[i]["image"] for i in range(16)]) / np.float32(255)
  posterior = ae_apply({"params": ae.state.params}, images * 2 - 1, method=ae_task.model.encode)
  mean, logvar = (np.asarray(v, np.float64) for v in (posterior.mean, posterior.logvar))
  latents = mean + np.exp(0.5 * logvar) * np.asarray(jax.random.normal(jax.random.key(0),
                                                                       mean.shape))
  np.testing.assert_allclose(space.scaling_factor, 1 / np.std(latents), rtol=1e-5)
  # encode -> decode is the autoencoder's own (posterior-mode) reconstruction.
  recon, _ = ae_apply({"params": ae.state.params}, images[:4] * 2 - 1)
  np.testing.assert_allclose(space.decode(space.encode(images[:4])),
                             np.clip((recon + 1) / 2, 0, 1), atol=1e-5)
  assert jax.eval_shape(task.init_params, jax.random.key(0))["denoiser"]["conv_in"][
      "kernel"].value.shape[2] == 4  # latent channels in
  params = nn.unbox(fast_jit(task.init_params)(jax.random.key(0)))
  batch = {"image": images[:8], "text": task.tokenizer.encode_batch(["a red circle."] * 8, 12)}
  loss, _ = fast_jit(task.loss_fn)(params, batch, jax.random.key(1))
  assert np.isfinite(loss)
  # The autoencoder is frozen: no gradient reaches it (its weights are constants, not params).
  assert set(params) == {"text", "denoiser", "null_context"}
  samples = task.sample(params, ["a red circle."], num_samples=2, steps=2, sampler="ddim")
  assert samples.shape == (2, 16, 16, 3) and 0.0 <= samples.min() and samples.max() <= 1.0
