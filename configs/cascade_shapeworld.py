"""Imagen-style cascade on ShapeWorld: a 16 px text-to-image base, a 16 -> 32 px
super-resolution stage, and (the alternative second stage) an SDXL-style 32 px refiner.

Three runs from this one file; `task` and a few keys pick the stage:

  mmjax train --config configs/cascade_shapeworld.py --workdir runs/cascade/base \
      --config.task=diffusion --config.data.image_size=16
  mmjax train --config configs/cascade_shapeworld.py --workdir runs/cascade/superres
  mmjax train --config configs/cascade_shapeworld.py --workdir runs/cascade/refiner \
      --config.task=diffusion --config.diffusion.max_train_time=0.3
  mmjax sample --config configs/cascade_shapeworld.py --workdir runs/cascade/superres \
      --prompt "a large red circle" --prompt "a small blue square"

Everything else is `t2i_shapeworld.py:unet` (UNet (64, 128), text tower, cosine schedule, v
prediction with min-SNR-5, 10% condition dropout, DPM-Solver++ 2M with guidance 3). The
super-resolution stage is trained on 16 px area-downsampled images, noise-augmented to a
random level in [0, 0.5] (Imagen); it samples with level 0.1. The refiner trains only on
t <= 0.3 and refines upsampled base samples at strength <= 0.3 (`DiffusionTask.refine`).
"""
import ml_collections

import t2i_shapeworld


def get_config() -> ml_collections.ConfigDict:
  c = t2i_shapeworld.get_config("unet")
  c.task = "superres"
  # 1.0: the whole schedule; the refiner run overrides it (it never sees more noise).
  c.diffusion.max_train_time = 1.0
  # low_res_size: the base stage's resolution; max_aug_level: training noise augmentation of
  # the low-res image, uniform in [0, max]; aug_level: the fixed level of eval and sampling.
  c.superres = ml_collections.ConfigDict(dict(low_res_size=16, max_aug_level=0.5,
                                              aug_level=0.1))
  # The base run `sample` starts from; its config is its config.json unless base_config names
  # a config file.
  c.cascade = ml_collections.ConfigDict(dict(base_workdir="runs/cascade/base", base_config=""))
  return c
