"""KL autoencoder (SD-style VAE) on the embedded ShapeWorld images: 32x32x3 -> 8x8x4 latents.

  mmjax train --config configs/autoencoder_shapeworld.py --workdir runs/autoencoder

Encoder/decoder widths (16, 32, 32) (downsample factor 4), one ResBlock per level (decoder: two),
self-attention in the 8x8 middle, 4 latent channels; L1 reconstruction + 1e-6 x KL (Stable
Diffusion's weight, in its per-pixel-sum units), decoding posterior samples in training. No GAN
or LPIPS term. See experiments/autoencoder_shapeworld/README.md for the measured PSNR.
"""
import ml_collections

import common


def get_config() -> ml_collections.ConfigDict:
  c = common.trainer("autoencoder", batch_size=16, total_steps=800, eval_every=200,
                     checkpoint_every=400)

  c.data = common.shapeworld_data(image_size=32, num_objects=(1, 3))

  # scaling_factor: 1 / latent std, for a latent diffusion model built on this autoencoder;
  # set it from the run's eval_scaling_factor (it does not affect autoencoder training).
  c.model = ml_collections.ConfigDict(dict(
      name="kl_autoencoder", dtype="float32", channels=(16, 32, 32), latent_channels=4,
      num_res_blocks=1, num_groups=8, mid_attention=True, num_heads=1, scaling_factor=1.0))

  # reconstruction: "l1" | "l2"; sample_posterior: decode a posterior sample (else the mean).
  c.loss = ml_collections.ConfigDict(dict(reconstruction="l1", kl_weight=1e-6,
                                          sample_posterior=True))

  c.optim = common.adamw(2e-3, end_lr_ratio=0.05, weight_decay=0.0, b2=0.99, eps=1e-8)

  # Held-out metrics on the first `num_images` test-split images (fixed latent-sample key).
  c.eval = ml_collections.ConfigDict(dict(num_images=256, seed=1))

  # End-of-run reconstructions.png: `num_images` originals above their reconstructions.
  c.artifacts = ml_collections.ConfigDict(dict(num_images=8, zoom=4))
  return c
