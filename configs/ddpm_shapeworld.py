"""Small text-to-image DDPM on the embedded ShapeWorld data (32x32, CPU demo).

  mmjax train --config configs/ddpm_shapeworld.py --workdir runs/ddpm
  mmjax sample --config configs/ddpm_shapeworld.py --workdir runs/ddpm \
      --prompt "a large red circle" --prompt "a small blue square" --out runs/ddpm/red.png

A UNet (64, 128) with cross-attention at level 1 and in the middle, conditioned on a jointly
trained 2-layer width-128 text transformer; cosine schedule, eps prediction with min-SNR-5
weighting, 10% condition dropout for classifier-free guidance. Samples: DPM-Solver++ 2M,
20 steps, guidance 3.
"""
import ml_collections

import common


def get_config() -> ml_collections.ConfigDict:
  c = common.trainer("diffusion", batch_size=64, total_steps=3000, eval_every=500,
                     checkpoint_every=500)

  c.data = common.shapeworld_data(image_size=32, num_objects=(1, 1), context_length=24)

  # The UNet cross-attends to the text tower's per-token features (its context_dim is the
  # text width, set by the task).
  c.model = ml_collections.ConfigDict(dict(
      name="text_to_image_denoiser", dtype="float32", attention_impl="einsum",
      unet=dict(name="unet", channels=(64, 128), num_res_blocks=2, attention_levels=(1,),
                mid_attention=True, num_heads=4, num_groups=32, dropout_rate=0.0,
                scale_shift=False),
      text=common.text_transformer(num_layers=2)))

  # schedule: "cosine" | "linear" | "scaled_linear" (discrete: trained on the T grid times);
  # prediction: "eps" | "v" | "x0"; min_snr_gamma: None for the plain MSE.
  c.diffusion = ml_collections.ConfigDict(dict(
      schedule="cosine", num_train_steps=1000, discrete=True, prediction="eps",
      min_snr_gamma=5.0, cfg_dropout=0.1))
  c.diffusion.min_snr_gamma = ml_collections.FieldReference(5.0, field_type=float)

  c.optim = common.adamw(1e-3, warmup_steps=100, end_lr_ratio=0.05, weight_decay=0.01,
                         b2=0.99, eps=1e-8)

  # Cheap held-out metric: denoising MSE on `batch_size` test images at fixed times and noise.
  c.eval = ml_collections.ConfigDict(dict(batch_size=64, times=(0.1, 0.3, 0.5, 0.7, 0.9),
                                          seed=1))

  # End-of-run sample grid (samples.png): one row per prompt.
  c.sample = ml_collections.ConfigDict(dict(
      prompts=("a large red circle.", "a small blue square.", "a large green triangle.",
               "a small yellow cross."),
      num_per_prompt=4, steps=20, sampler="dpmpp_2m", guidance=3.0, seed=0, zoom=4))
  return c
