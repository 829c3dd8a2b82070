"""Small image captioner (ViT + cross-attending text decoder) on the embedded ShapeWorld data.

  mmjax train --config configs/caption_shapeworld.py --workdir runs/caption

Trains on 2 CPU cores in about 10 minutes; experiments/caption_shapeworld/README.md has the
measured BLEU-4, CIDEr-D and attribute accuracies.
"""
import ml_collections

import common


def get_config() -> ml_collections.ConfigDict:
  c = common.trainer("captioning", batch_size=64, total_steps=400, eval_every=200,
                     checkpoint_every=200)

  # 1-2 objects per image: single-object images give exact per-attribute accuracies, two-object
  # ones need the decoder to name both objects (and relations). 32x32 px keeps a step cheap on
  # CPU; a small object is still 6-9 px wide. Each row is BOS + one of the image's 5 captions
  # (drawn per epoch) + EOS; the longest 1-2 object caption is 14 words, so 22 tokens (the
  # ShapeWorld maximum of 20 words + BOS + EOS) never truncates.
  c.data = common.shapeworld_data(image_size=32, num_objects=(1, 2), context_length=22)

  # Two stride-2 convolutions (32 -> 8 px) then 1x1 patches: 64 image tokens that carry local
  # shape features (plain patchify learned shape slowly: experiments/clip_shapeworld). The
  # causal decoder cross-attends to all image tokens in every block.
  c.model = ml_collections.ConfigDict(common.captioner(
      patch_size=1, vision_layers=2, dtype="float32", attention_impl="einsum", remat=False))

  # Warm start (mmjax/train/warm_start.py): --config.init_from.workdir=runs/clip copies the image
  # tower of a trained configs/clip_shapeworld.py run into this model before step 0; the ViT
  # must match it: add --config.model.patch_size=2 --config.model.vision_layers=3.
  c.init_from = common.warm_start()

  c.optim = common.adamw(1e-3)

  # num_images: first test images, each scored against all 5 reference captions.
  # num_beams: 1 = greedy decoding, > 1 = beam search (length_penalty as in transformers).
  c.eval = ml_collections.ConfigDict(dict(num_images=500, batch_size=128, num_beams=1,
                                          length_penalty=1.0))
  return c
