"""Small CLIP on the embedded ShapeWorld data: trains on 2 CPU cores in minutes.

  mmjax train --config configs/clip_shapeworld.py --workdir runs/clip
"""
import math

import ml_collections

import common


def get_config() -> ml_collections.ConfigDict:
  c = common.trainer("contrastive", batch_size=128, total_steps=600, eval_every=150,
                     checkpoint_every=300)

  # Single-object scenes: with 1-3 objects per image, colours, counts and positions already
  # separate a batch's captions and the model learned no shape at all in 400 steps
  # (experiments/clip_shapeworld/README.md); --config.data.num_objects='(1,3)' for scenes.
  c.data = common.shapeworld_data(image_size=64, num_objects=(1, 1), context_length=24)

  # The conv-stem ViT (64 -> 16 px, then 2x2 patches) pooled by the mean of its tokens; a
  # 3-layer causal text transformer pooled at EOS. logit_bias_init: -10 for SigLIP.
  c.model = ml_collections.ConfigDict(dict(
      name="clip", embed_dim=128, dtype="float32", attention_impl="einsum", remat=False,
      logit_scale_init=math.log(1 / 0.07), logit_bias_init=None,
      image_encoder=common.vision_transformer(pool="gap"),
      text_encoder=common.text_transformer()))

  # kind: "clip" | "siglip"; block_size: tiles of the blockwise loss (None = plain N x N);
  # sharded: ring loss over the batch mesh axes (per-device memory O(b D), not O(N D)).
  c.loss = ml_collections.ConfigDict(dict(kind="clip", block_size=None, sharded=False))
  c.loss.block_size = ml_collections.FieldReference(None, field_type=int)
  c.grad_cache_chunks = 0     # > 0: embed the batch in this many chunks (GradCache)

  c.optim = common.adamw(2e-3)

  c.eval = ml_collections.ConfigDict(dict(zero_shot_images=1000, retrieval_images=500,
                                          batch_size=256, **common.zero_shot_classes()))
  return c
