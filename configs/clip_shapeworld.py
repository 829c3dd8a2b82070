"""Small CLIP on the embedded ShapeWorld data: trains on 2 CPU cores in minutes.

  mmjax train --config configs/clip_shapeworld.py --workdir runs/clip
"""
import math

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "contrastive"
  c.seed = 0
  c.batch_size = 128          # global; split over hosts and the data x fsdp mesh axes
  c.total_steps = 600
  c.log_every = 25
  c.eval_every = 150
  c.checkpoint_every = 300
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Single-object scenes: with 1-3 objects per image, colours, counts and positions already
  # separate a batch's captions and the model learned no shape at all in 400 steps
  # (experiments/clip_shapeworld/README.md); --config.data.num_objects='(1,3)' for scenes.
  c.data = ml_collections.ConfigDict(dict(
      name="shapeworld", seed=0, image_size=64, num_objects=(1, 1), context_length=24,
      train_length=10_000_000))

  c.model = ml_collections.ConfigDict(dict(
      embed_dim=128, dtype="float32", attention_impl="einsum", remat=False,
      logit_scale_init=math.log(1 / 0.07), logit_bias_init=None,
      # A two-conv stem (64 -> 16 px) then 2x2 patches: 64 tokens that already carry local
      # shape features; plain 8x8 patchify learned shape far more slowly here.
      image=dict(stem_channels=(16, 32), patch_size=2, width=128, layers=3, heads=4,
                 mlp_ratio=2.0, pool="gap"),
      text=dict(width=128, layers=3, heads=4, mlp_ratio=2.0)))

  # kind: "clip" | "siglip"; block_size: tiles of the blockwise loss (None = plain N x N);
  # sharded: ring loss over the batch mesh axes (per-device memory O(b D), not O(N D)).
  c.loss = ml_collections.ConfigDict(dict(kind="clip", block_size=None, sharded=False))
  c.loss.block_size = ml_collections.FieldReference(None, field_type=int)
  c.grad_cache_chunks = 0     # > 0: embed the batch in this many chunks (GradCache)

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=2e-3, warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05,
      b1=0.9, b2=0.98, eps=1e-6, clip_grad_norm=1.0))

  c.eval = ml_collections.ConfigDict(dict(zero_shot_images=1000, retrieval_images=500,
                                          batch_size=256))
  return c
