"""Small VQA model on the embedded ShapeWorld data (1-3 objects, 5 questions per image).

  mmjax train --config configs/vqa_shapeworld.py --workdir runs/vqa
  mmjax train --config configs/vqa_shapeworld.py --workdir runs/vqa_gen --config.model.head=generative
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "vqa"
  c.seed = 0
  c.batch_size = 128          # global; split over hosts and the data x fsdp mesh axes
  c.total_steps = 600
  c.log_every = 25
  c.eval_every = 150
  c.checkpoint_every = 300
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # Questions are at most 14 words: BOS + question + answer + EOS fits in 18 tokens.
  c.data = ml_collections.ConfigDict(dict(
      name="shapeworld", seed=0, image_size=64, num_objects=(1, 3), context_length=18,
      train_length=10_000_000))

  # head: "classifier" (VQAClassifier over the answer list) | "generative" (Captioner,
  # constrained greedy decoding to the answer list). The generative head uses image.* for its
  # ViT and text.* (width, layers, heads, mlp_ratio) for its decoder.
  c.model = ml_collections.ConfigDict(dict(
      head="classifier", dtype="float32", attention_impl="einsum", remat=False, head_hidden=256,
      # Two stride-2 convolutions (64 -> 16 px) then 2x2 patches: 64 image tokens with local
      # shape features (see experiments/clip_shapeworld: plain patchify learns shape slowly).
      image=dict(stem_channels=(16, 32), patch_size=2, width=128, layers=3, heads=4,
                 mlp_ratio=2.0),
      # The question encoder (bidirectional, cross-attending to the image tokens in every block).
      text=dict(width=128, layers=2, heads=4, mlp_ratio=2.0, pool="first")))

  # Warm start (mmjax/train/warm_start.py): --config.init_from.workdir=runs/clip copies the image
  # tower of a trained configs/clip_shapeworld.py run (same ViT) into this model before step 0.
  c.init_from = ml_collections.ConfigDict(dict(workdir="", config="", step=-1,
                                               params=("image_encoder:image_encoder",)))

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05,
      b1=0.9, b2=0.98, eps=1e-6, clip_grad_norm=1.0))

  # num_examples: test questions (all 5 questions of num_examples / 5 images).
  c.eval = ml_collections.ConfigDict(dict(num_examples=1000, batch_size=64))
  return c
