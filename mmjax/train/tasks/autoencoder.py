"""KL-autoencoder training (the latent space for latent diffusion) on ShapeWorld images.

Images come from `pipeline.example_batches` with an image-only loader (captions are not
needed). The model works on images in [-1, 1]; reconstructions are judged in [0, 1].

`evaluate` runs a fixed held-out set of test images once through encode (posterior mode for
the reconstruction, a fixed-key posterior sample for the latent statistics) and decode:
  eval_mse: mean squared error of the clipped reconstruction over all pixels, in [0, 1] units;
  eval_psnr: 10 log10(1 / eval_mse) dB (PSNR of the whole set's MSE, peak 1);
  eval_kl: mean per-image KL(q(z|x) || N(0, I)) in nats;
  eval_latent_std / eval_scaling_factor: std of the sampled latents and its inverse, the
    `KLAutoencoder.scaling_factor` a latent diffusion model should use.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax.data import pipeline
from mmjax.data.shapeworld_inputs import bad_example_options, check_images
from mmjax.data.sources import image_text_source
from mmjax.models import build_model
from mmjax.nn.autoencoder import (RECONSTRUCTION_LOSSES, KLAutoencoder, autoencoder_loss,
                                  estimate_scaling_factor)
from mmjax.train import sharding
from mmjax.train.tasks.base import Task


class _LoadImage:
  """(stream position, source index) -> {"image": float32 `[S, S, 3]` in [0, 1]}."""

  def __init__(self, source, image_shape: tuple[int, int, int]):
    self.source, self.image_shape = source, image_shape

  def __call__(self, position: int, index: int) -> dict[str, np.ndarray]:
    image = pipeline.check_image(self.source[index].get("image"), index, self.image_shape)
    return {"image": image.astype(np.float32) / np.float32(255)}


def psnr(mse: float | np.ndarray, peak: float = 1.0) -> float | np.ndarray:
  """Peak signal-to-noise ratio 10 log10(peak^2 / mse) in dB."""
  return 10.0 * np.log10(peak ** 2 / np.asarray(mse, np.float64))


class AutoencoderTask(Task):
  """Reconstruction (L1 or L2) + kl_weight x KL of a `KLAutoencoder` (no GAN / LPIPS)."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self._model = build_model(config.model)
    loss = config.loss
    if loss.reconstruction not in RECONSTRUCTION_LOSSES:
      raise ValueError(f"loss.reconstruction must be one of {RECONSTRUCTION_LOSSES}, got "
                       f"{loss.reconstruction!r}")
    if loss.kl_weight < 0:
      raise ValueError(f"loss.kl_weight must be >= 0, got {loss.kl_weight}")
    size, factor = config.data.image_size, self._model.downsample_factor
    if size % factor:
      raise ValueError(f"data.image_size={size} must be divisible by the autoencoder's "
                       f"downsample factor {factor} (model.channels={tuple(config.model.channels)})")
    self._eval_images = None
    self._eval_fn = None
    self._reconstruct_fn = None

  @property
  def model(self) -> KLAutoencoder:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int):
    return image_text_source(self.config.data, split, length)

  def train_batches(self, process_index: int, process_count: int):
    source = self._source("train", self.config.data.train_length)
    size = self.config.data.image_size
    return pipeline.batch_iterator(pipeline.example_batches(
        source, _LoadImage(source, (size, size, 3)),
        batch_size=self.config.batch_size // process_count, seed=self.config.seed,
        process_index=process_index, process_count=process_count,
        **bad_example_options(self.config.data)))

  def check_batch(self, batch, step: int) -> None:
    check_images(batch, step, self.config.data.image_size)

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    size = self.config.data.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    return self._model.init(rng, images, jax.random.key(0))["params"]

  def loss_fn(self, params, batch, rng):
    cfg = self.config.loss
    x = batch["image"].astype(jnp.float32) * 2.0 - 1.0  # [0, 1] -> [-1, 1]
    key = rng if cfg.sample_posterior else None
    recon, posterior = self._model.apply({"params": params}, x, key)
    loss, metrics = autoencoder_loss(recon, x, posterior, cfg.kl_weight,
                                     reconstruction=cfg.reconstruction)
    # mse above is in [-1, 1] units (4x the [0, 1] MSE); report the [0, 1] one like evaluate.
    metrics["mse"] = metrics["mse"] / 4.0
    return loss, metrics

  # -- evaluation -----------------------------------------------------------------------------

  def eval_images(self) -> np.ndarray:
    """The fixed held-out images float32 `[eval.num_images, S, S, 3]` in [0, 1]."""
    if self._eval_images is None:
      source = self._source("test", self.config.eval.num_images)
      n = len(source)
      size = self.config.data.image_size
      load = _LoadImage(source, (size, size, 3))
      self._eval_images = np.stack([load(i, i)["image"] for i in range(n)])
    return self._eval_images

  def reconstruct(self, params, images: np.ndarray, mesh: Mesh) -> np.ndarray:
    """Posterior-mode reconstructions `[N, S, S, 3]` in [0, 1] of images `[N, S, S, 3]` in [0, 1]."""
    if self._reconstruct_fn is None:
      def run(params, images):
        recon, _ = self._model.apply({"params": params}, images * 2.0 - 1.0)
        return jnp.clip((recon + 1.0) / 2.0, 0.0, 1.0)
      self._reconstruct_fn = jax.jit(run)
    placed = sharding.replicate_from_host(np.asarray(images, np.float32), mesh)
    return np.asarray(sharding.to_host(self._reconstruct_fn(params, placed)))

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    if self._eval_fn is None:
      key = jax.random.key(self.config.eval.seed)

      def stats(params, images):
        posterior = self._model.apply({"params": params}, images * 2.0 - 1.0,
                                      method=KLAutoencoder.encode)
        recon = self._model.apply({"params": params}, posterior.mode(),
                                  method=KLAutoencoder.decode)
        recon = jnp.clip((recon + 1.0) / 2.0, 0.0, 1.0)
        latents = posterior.sample(key)
        return {"eval_mse": jnp.mean(jnp.square(recon - images)),
                "eval_kl": jnp.mean(posterior.kl()),
                "eval_latent_std": jnp.std(latents),
                "eval_scaling_factor": estimate_scaling_factor(latents)}
      self._eval_fn = jax.jit(stats)
    placed = sharding.replicate_from_host(self.eval_images(), mesh)
    results = {k: float(v) for k, v in sharding.to_host(self._eval_fn(params, placed)).items()}
    results["eval_psnr"] = float(psnr(results["eval_mse"]))
    return results

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    """`reconstructions.png`: originals (top row) above their reconstructions; `loss.png`."""
    from mmjax.train import plots
    from mmjax.train.plots import save_image_grid
    cfg = self.config.artifacts
    originals = self.eval_images()[:cfg.num_images]
    recon = self.reconstruct(params, originals, mesh)
    if jax.process_index() != 0:
      return []
    grid = save_image_grid(workdir / "reconstructions.png",
                           np.concatenate([originals, recon]), columns=len(originals),
                           zoom=cfg.zoom)
    return [plots.loss_curve(workdir), grid]
