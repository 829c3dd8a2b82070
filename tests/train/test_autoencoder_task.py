"""The KL-autoencoder task through the one trainer: eval metrics, artifacts, bad input."""
import jax
import numpy as np
import pytest
from PIL import Image

from mmjax.train.logging import read_jsonl
from mmjax.train.tasks.autoencoder import AutoencoderTask

from conftest import tiny_autoencoder_config as tiny_config


@pytest.fixture(scope="module")
def trained(trained_autoencoder):
  return trained_autoencoder


def test_training_runs_and_writes_reconstructions(trained):
  _, workdir, result = trained
  records = read_jsonl(workdir / "train.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["kl"] >= 0 for r in records)
  assert set(result.eval_metrics) == {"eval_mse", "eval_psnr", "eval_kl", "eval_latent_std",
                                      "eval_scaling_factor"}
  assert all(np.isfinite(v) for v in result.eval_metrics.values())
  # 4 originals above 4 reconstructions, 16 px, padding 2.
  assert Image.open(workdir / "reconstructions.png").size == (4 * 18 + 2, 2 * 18 + 2)


def test_eval_metrics_match_a_recompute(trained):
  config, _, result = trained
  task = AutoencoderTask(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  metrics = task.evaluate(result.state.params, mesh)
  assert metrics == result.eval_metrics  # deterministic
  images = task.eval_images()
  assert images.shape == (8, 16, 16, 3) and 0.0 <= images.min() and images.max() <= 1.0
  recon = task.reconstruct(result.state.params, images, mesh)
  mse = np.mean((recon.astype(np.float64) - images) ** 2)
  np.testing.assert_allclose(metrics["eval_mse"], mse, rtol=1e-4)
  np.testing.assert_allclose(metrics["eval_psnr"], 10 * np.log10(1.0 / mse), rtol=1e-4)
  # The latent statistics from the encoder's posterior moments, sampled by hand in numpy with
  # the eval key: z = mean + exp(logvar / 2) eps; scaling factor = 1 / std of all elements.
  encode = jax.jit(lambda p, x: task.model.apply({"params": p}, x, method=type(task.model).encode),
                   compiler_options={"xla_backend_optimization_level": 0})
  posterior = encode(result.state.params, images * 2 - 1)
  mean, logvar = (np.asarray(v, np.float64) for v in (posterior.mean, posterior.logvar))
  eps = np.asarray(jax.random.normal(jax.random.key(config.eval.seed), mean.shape))
  latents = mean + np.exp(0.5 * logvar) * eps
  centred = latents - latents.mean()
  latent_std = np.sqrt(np.mean(centred ** 2))
  np.testing.assert_allclose(metrics["eval_latent_std"], latent_std, rtol=1e-5)
  np.testing.assert_allclose(metrics["eval_scaling_factor"], 1.0 / latent_std, rtol=1e-5)
  kl = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(metrics["eval_kl"], kl.mean(), rtol=1e-4)


def test_bad_batches_and_config_fail_clearly():
  task = AutoencoderTask(tiny_config())
  good = {"image": np.zeros((8, 16, 16, 3), np.float32)}
  task.check_batch(good, 0)
  with pytest.raises(ValueError, match=r"image has shape \(8, 32, 32, 3\), expected \[batch, 16"):
    task.check_batch({"image": np.zeros((8, 32, 32, 3), np.float32)}, 3)
  with pytest.raises(ValueError, match="image has dtype uint8, expected float"):
    task.check_batch({"image": np.zeros((8, 16, 16, 3), np.uint8)}, 3)
  with pytest.raises(ValueError, match="has no 'image'"):
    task.check_batch({"text": np.zeros((8, 4), np.int32)}, 3)
  with pytest.raises(ValueError, match="image_size=17 must be divisible by .* factor 2"):
    AutoencoderTask(tiny_config("data.image_size=17"))
  with pytest.raises(ValueError, match="loss.reconstruction must be one of"):
    AutoencoderTask(tiny_config("loss.reconstruction=huber"))
