"""Text-to-image diffusion on the embedded ShapeWorld data (32x32): trains on 2 CPU cores.

  mmjax train --config configs/t2i_shapeworld.py --workdir runs/t2i
  mmjax sample --config configs/t2i_shapeworld.py --workdir runs/t2i \
      --prompt "a large red circle." --prompt "a small blue square." --out runs/t2i/red.png
  mmjax train --config configs/t2i_shapeworld.py:unet --workdir runs/t2i_unet   # the UNet

The denoiser (`model.denoiser.name`) is a DiT by default: 4x4 patches (64 tokens), width 192,
6 adaLN-Zero blocks that cross-attend to a jointly trained 2-layer width-128 text
transformer. `:unet` swaps in the UNet (64, 128) with cross-attention at level 1 and in the
middle (the UNet's 3x3 convolutions train ~10x slower per example on XLA:CPU; see
experiments/t2i_shapeworld/README.md). Cosine schedule, v prediction with min-SNR-5 weighting,
10% condition dropout for classifier-free guidance; samples: DPM-Solver++ 2M, 20 steps,
guidance 3.

Measured wall time of the default run on 2 CPU cores: experiments/t2i_shapeworld/README.md
(train.jsonl's `elapsed_s`).
"""
import ml_collections

import common

DENOISERS = {
    "dit": dict(name="dit", patch_size=4, width=192, num_layers=6, num_heads=4, mlp_ratio=4.0,
                position_embedding="sincos"),
    "unet": dict(name="unet", channels=(64, 128), num_res_blocks=2, attention_levels=(1,),
                 mid_attention=True, num_heads=4, num_groups=32, dropout_rate=0.0,
                 scale_shift=False),
}


def get_config(denoiser: str = "dit") -> ml_collections.ConfigDict:
  if denoiser not in DENOISERS:
    raise ValueError(f"configs/t2i_shapeworld.py:DENOISER takes DENOISER in {sorted(DENOISERS)}, "
                     f"got {denoiser!r}")
  # Small batches, many steps: on 2 cores the step count, not the batch, limits what a
  # 45-minute run learns. Every 250-step checkpoint is kept, for the judged curve.
  c = common.trainer("diffusion", batch_size=32, total_steps=2000, eval_every=500,
                     checkpoint_every=250)
  c.keep_checkpoints = 8

  c.data = common.shapeworld_data(image_size=32, num_objects=(1, 1), context_length=24)

  # The denoiser cross-attends to the text tower's per-token features (its context_dim is the
  # text width, set by the task).
  c.model = ml_collections.ConfigDict(dict(
      name="text_to_image_denoiser", dtype="float32", attention_impl="einsum",
      denoiser=dict(DENOISERS[denoiser]), text=common.text_transformer(num_layers=2)))

  # schedule: "cosine" | "linear" | "scaled_linear" (discrete: trained on the T grid times);
  # prediction: "eps" | "v" | "x0"; min_snr_gamma: None for the plain MSE.
  # v-prediction: with eps, x0 = (x_t - sigma eps) / alpha amplifies a young model's eps
  # error at high noise (the first sampler steps), and a 500-step DiT's samples were noise.
  c.diffusion = ml_collections.ConfigDict(dict(
      schedule="cosine", num_train_steps=1000, discrete=True, prediction="v",
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
