"""Where a diffusion model lives: pixel space, or the latent space of a frozen KL autoencoder.

A space maps a batch of images in [0, 1] to the diffused variable x0 and back:

    x0 = space.encode(images [B, S, S, 3], key)      # [B, *space.shape]
    images = space.decode(x0)                        # [B, S, S, 3] in [0, 1]

`PixelSpace`: x0 = 2 * image - 1 (DDPM / Imagen). `LatentSpace`: x0 = scaling_factor * z with
z from a trained `KLAutoencoder`'s posterior (Stable Diffusion's latent diffusion); the
autoencoder's weights are frozen host constants, never part of the trained parameters.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.data.sources import image_text_source
from mmjax.nn.autoencoder import KLAutoencoder, estimate_scaling_factor
from mmjax.train.config import load_run_config


class PixelSpace:
  """Diffusion on the images themselves, rescaled to [-1, 1]."""

  thresholding = True  # x0 lives in [-1, 1]: samplers may clip their x0 predictions to it.

  def __init__(self, image_size: int):
    self.shape = (image_size, image_size, 3)

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """`[B, S, S, 3]` in [0, 1] -> `[B, S, S, 3]` in [-1, 1]."""
    del key
    return images.astype(jnp.float32) * 2.0 - 1.0

  def decode(self, x0: jax.Array) -> jax.Array:
    """`[B, S, S, 3]` -> images in [0, 1] (clipped)."""
    return jnp.clip((x0 + 1.0) / 2.0, 0.0, 1.0)


class LatentSpace:
  """Diffusion on `scaling_factor * z`, z ~ q(z | image) of a frozen `KLAutoencoder`.

  Attributes:
    shape: `(S / f, S / f, latent_channels)` for images of side S and downsample factor f.
    scaling_factor: 1 / std of training latents (SD v1 uses 0.18215 for its autoencoder).
  """

  thresholding = False  # latents are unbounded

  def __init__(self, model: KLAutoencoder, params, image_size: int, scaling_factor: float,
               sample_posterior: bool = False):
    factor = model.downsample_factor
    if image_size % factor:
      raise ValueError(f"data.image_size={image_size} is not divisible by the autoencoder's "
                       f"downsample factor {factor}")
    self.model, self.params = model, params
    self.scaling_factor = float(scaling_factor)
    self.sample_posterior = sample_posterior
    self.shape = (image_size // factor, image_size // factor, model.latent_channels)

  def encode(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """`[B, S, S, 3]` in [0, 1] -> scaled latents `[B, S/f, S/f, c]` (no gradient)."""
    posterior = self.model.apply({"params": self.params}, images.astype(jnp.float32) * 2.0 - 1.0,
                                 method=KLAutoencoder.encode)
    if self.sample_posterior and key is not None:
      z = posterior.sample(key)
    else:
      z = posterior.mode()
    return jax.lax.stop_gradient(self.scaling_factor * z)

  def decode(self, x0: jax.Array) -> jax.Array:
    """Scaled latents `[B, S/f, S/f, c]` -> images `[B, S, S, 3]` in [0, 1] (clipped)."""
    images = self.model.apply({"params": self.params}, x0 / self.scaling_factor,
                              method=KLAutoencoder.decode)
    return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


def load_latent_space(config: ml_collections.ConfigDict, data: ml_collections.ConfigDict
                      ) -> LatentSpace:
  """The latent space of the trained autoencoder run in `config.workdir`.

  Args:
    config: the diffusion config's `autoencoder` section: `workdir` (an `autoencoder` task run,
      with its config.json and checkpoints), `step` (None: latest), `scaling_factor` (None:
      estimated as Stable Diffusion does, 1 / std of posterior samples of
      `scale_images` training images), `sample_posterior` (train on posterior samples rather
      than the mode).
    data: the diffusion config's `data` section; image size and source must match the
      autoencoder's.
  """
  from mmjax.train import sharding
  from mmjax.train.trainer import restore_params
  workdir = pathlib.Path(config.workdir)
  ae_config = load_run_config(workdir, f"train one first: mmjax train --config "
                              f"configs/autoencoder_shapeworld.py --workdir {workdir}")
  if ae_config.task != "autoencoder":
    raise ValueError(f"autoencoder.workdir={str(workdir)!r} holds a {ae_config.task!r} run, "
                     "expected an 'autoencoder' run")
  if ae_config.data.image_size != data.image_size:
    raise ValueError(f"the autoencoder was trained on {ae_config.data.image_size}px images but "
                     f"data.image_size={data.image_size}")
  run = restore_params(ae_config, workdir, step=config.step, devices=jax.local_devices()[:1])
  params = jax.tree.map(jnp.asarray, sharding.to_host(run.params))
  model = run.task.model
  scaling_factor = config.scaling_factor
  if scaling_factor is None:
    source = image_text_source(data, "train", config.scale_images)
    images = np.stack([source[i]["image"] for i in range(len(source))]) / np.float32(255)
    posterior = jax.jit(lambda x: model.apply({"params": params}, x * 2.0 - 1.0,
                                              method=KLAutoencoder.encode))(images)
    scaling_factor = float(estimate_scaling_factor(posterior.sample(jax.random.key(0))))
  return LatentSpace(model, params, data.image_size, scaling_factor, config.sample_posterior)
