"""Flamingo on the embedded ShapeWorld scenes: a frozen CLIP vision tower and a frozen LM,
joined by a trained Perceiver resampler and gated cross-attention; evaluated 0/2/4/8-shot.

  mmjax train --config configs/clip_shapeworld.py --workdir runs/clip
  mmjax train --config configs/lm_shapeworld.py:packed --workdir runs/lm_packed
  mmjax train --config configs/flamingo_shapeworld.py --workdir runs/flamingo \\
      --config.init_from.lm.workdir=runs/lm_packed --config.init_from.vision.workdir=runs/clip

":binding" adds fast-binding rows (half of them) and their few-shot evaluation: ShapeWorld's
colour and shape questions answered by one of 8 new words that each row's episode binds to
its answers afresh, so only the shots tell which word is which (mmjax/train/tasks/binding.py).

Rows, loss and the few-shot evaluation: mmjax/train/tasks/interleaved.py. Only the resampler,
the gated blocks and the `<image>` / `<eoc>` rows train (`optim.trainable`); with both warm
starts the rest is the two source runs' weights, unchanged.
"""
import ml_collections

import clip_shapeworld
import common
import lm_shapeworld

from mmjax.models.flamingo import TRAINABLE

IMAGES_PER_ROW = 5  # as Flamingo's training sequences (5 images); evaluated up to 8 shots
VARIANTS = ("", "binding")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"configs/flamingo_shapeworld.py:VARIANT takes one of {VARIANTS[1:]} (or "
                     f"nothing), got {variant!r}")
  lm = lm_shapeworld.get_config("packed")
  clip = clip_shapeworld.get_config()
  # Rows of 5 images: 160 images a step through the frozen ViT (forward only).
  c = common.trainer("interleaved", batch_size=32, total_steps=1500, eval_every=500,
                     checkpoint_every=500)

  # 1-3 objects, as the VQA and caption tasks. A caption chunk takes at most 22 tokens
  # (<image>, 20 words, <eoc>), a VQA chunk 18: BOS + 5 caption chunks = 111.
  c.data = common.shapeworld_data(image_size=clip.data.image_size, num_objects=(1, 3),
                                  context_length=112)
  c.data.images_per_row = IMAGES_PER_ROW
  c.data.row_kinds = ml_collections.ConfigDict(dict(vqa=1.0, caption=1.0, binding=0.0))
  # Retrieval-built rows (mmjax/train/tasks/interleaved.py): the share of rows whose images are
  # a query and its nearest train images by the frozen vision tower (needs init_from.vision),
  # among the first pool_images; 0 keeps every row random.
  c.data.rices_rows = ml_collections.ConfigDict(dict(fraction=0.0, pool_images=16384))
  # Fast-binding rows (mmjax/train/tasks/binding.py): `words` new tokens (0: none), `ways`
  # answers bound per episode, their images drawn by answer from the first pool_images.
  c.data.binding = ml_collections.ConfigDict(dict(words=0, ways=2, pool_images=4096))
  if variant == "binding":
    c.data.binding.words = 8
    c.data.row_kinds.binding = 2.0   # half the rows

  text = lm.model
  c.model = ml_collections.ConfigDict(dict(
      name="flamingo", max_length=lm.data.context_length, width=text.width,
      num_layers=text.num_layers, num_heads=text.num_heads, mlp_ratio=text.mlp_ratio,
      cross_attn_every=1, dtype="float32", attention_impl="einsum",
      vision_encoder=ml_collections.ConfigDict(clip.model.image_encoder),
      # 64 ViT tokens -> 16 latents per image.
      resampler=ml_collections.ConfigDict(dict(
          name="perceiver_resampler", num_latents=16, num_layers=2, num_heads=4,
          mlp_ratio=2.0))))

  c.optim = common.adamw(1e-3, trainable=TRAINABLE)

  # The LM of a configs/lm_shapeworld.py:packed run, the vision tower of a
  # configs/clip_shapeworld.py run (both off until their workdirs are set).
  lm_params = ("token_embed:token_embed", "pos_embed:pos_embed", "lm_head:lm_head",
               "transformer/ln_final:transformer/ln_final") + tuple(
                   f"transformer/block_{i}:transformer/block_{i}" for i in range(text.num_layers))
  c.init_from = ml_collections.ConfigDict(dict(
      lm=common.warm_start(lm_params),
      vision=common.warm_start(("image_encoder:vision_encoder",))))

  # shots: in-context examples before each test query; support_images: the train images they
  # come from; support_selection: "random" | "rices" (the nearest by the vision tower, see
  # mmjax/train/tasks/interleaved.py); max_caption_tokens: 20 words + <eoc>.
  c.eval = ml_collections.ConfigDict(dict(
      shots=(0, 2, 4, 8), vqa_images=200, caption_images=500, support_images=1000, seed=0,
      support_selection="random", max_caption_tokens=21, batch_size=50))
  return c
