"""Latent diffusion (Stable Diffusion's recipe) on the embedded ShapeWorld data, 32x32 images.

Two runs: the KL autoencoder first, then diffusion in its 8x8x4 latent space:

  mmjax train --config configs/autoencoder_shapeworld.py --workdir runs/autoencoder
  mmjax train --config configs/ldm_shapeworld.py --workdir runs/ldm
  mmjax sample --config configs/ldm_shapeworld.py --workdir runs/ldm --prompt "a large red circle"

Everything else is `t2i_shapeworld.py:unet` (text tower, schedule, guidance, optimizer); the UNet
runs on 8x8 latents, so it attends at both of its levels. The latents are scaled by
1 / std of 256 training images' posterior samples (estimated when the task starts) unless
`autoencoder.scaling_factor` is given.
"""
import ml_collections

import t2i_shapeworld


def get_config() -> ml_collections.ConfigDict:
  c = t2i_shapeworld.get_config("unet")
  c.autoencoder = ml_collections.ConfigDict(dict(
      workdir="runs/autoencoder", sample_posterior=False, scale_images=256))
  c.autoencoder.step = ml_collections.FieldReference(None, field_type=int)
  c.autoencoder.scaling_factor = ml_collections.FieldReference(None, field_type=float)
  c.model.denoiser.attention_levels = (0, 1)
  return c
