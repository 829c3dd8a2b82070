"""Small image captioner (ViT + cross-attending text decoder) on the embedded ShapeWorld data.

  mmjax train --config configs/caption_shapeworld.py --workdir runs/caption

Trains on 2 CPU cores in about 10 minutes; experiments/caption_shapeworld/README.md has the
measured BLEU-4, CIDEr-D and attribute accuracies.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "captioning"
  c.seed = 0
  c.batch_size = 64           # global; split over hosts and the data x fsdp mesh axes
  c.total_steps = 400
  c.log_every = 25
  c.eval_every = 200
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # 1-2 objects per image: single-object images give exact per-attribute accuracies, two-object
  # ones need the decoder to name both objects (and relations). 32x32 px keeps a step cheap on
  # CPU; a small object is still 6-9 px wide. Each row is BOS + one of the image's 5 captions
  # (drawn per epoch) + EOS; the longest 1-2 object caption is 14 words, so 22 tokens (the
  # ShapeWorld maximum of 20 words + BOS + EOS) never truncates.
  c.data = ml_collections.ConfigDict(dict(
      name="shapeworld", seed=0, image_size=32, num_objects=(1, 2), context_length=22,
      train_length=10_000_000))

  c.model = ml_collections.ConfigDict(dict(
      dtype="float32", attention_impl="einsum", remat=False, mlp_ratio=2.0,
      # Two stride-2 convolutions (32 -> 8 px) then 1x1 patches: 64 image tokens that carry local
      # shape features (plain patchify learned shape slowly: experiments/clip_shapeworld).
      image=dict(stem_channels=(16, 32), patch_size=1, width=128, layers=2, heads=4),
      # The causal decoder cross-attends to all image tokens in every block.
      text=dict(width=128, layers=2, heads=4)))

  # Warm start (mmjax/train/warm_start.py): --config.init_from.workdir=runs/clip copies the image
  # tower of a trained configs/clip_shapeworld.py run into this model before step 0; the ViT
  # must match it: add --config.model.image.patch_size=2 --config.model.image.layers=3.
  c.init_from = ml_collections.ConfigDict(dict(workdir="", config="", step=-1,
                                               params=("image_encoder:image_encoder",)))

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05,
      b1=0.9, b2=0.98, eps=1e-6, clip_grad_norm=1.0))

  # num_images: first test images, each scored against all 5 reference captions.
  # num_beams: 1 = greedy decoding, > 1 = beam search (length_penalty as in transformers).
  c.eval = ml_collections.ConfigDict(dict(num_images=500, batch_size=128, num_beams=1,
                                          length_penalty=1.0))
  return c
