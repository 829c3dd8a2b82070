"""Visual grounding on the embedded ShapeWorld data: box of "the small red circle" in 1-3 object
scenes, by a regression head or by coordinate tokens.

  mmjax train --config configs/grounding_shapeworld.py --workdir runs/grounding
  mmjax train --config configs/grounding_shapeworld.py --workdir runs/grounding_tok \
      --config.model.head=tokens
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "grounding"
  c.seed = 0
  c.batch_size = 64           # global; split over hosts and the data x fsdp mesh axes
  c.total_steps = 600
  c.log_every = 25
  c.eval_every = 200
  c.checkpoint_every = 300
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # 1-3 objects, so the expression has to pick one. Expressions are 2-5 words ("the small red
  # circle"): BOS + expression + 4 coordinate tokens + EOS fits in 12 tokens.
  c.data = ml_collections.ConfigDict(dict(
      name="shapeworld", seed=0, image_size=64, num_objects=(1, 3), context_length=12,
      train_length=10_000_000))

  # head: "regression" (RegressionGrounder: sigmoid (cx, cy, w, h) from the pooled
  # image-grounded expression encoder) | "tokens" (Captioner over words + num_bins coordinate
  # tokens; image.* is its ViT, text.* its decoder).
  c.model = ml_collections.ConfigDict(dict(
      head="regression", num_bins=32, dtype="float32", attention_impl="einsum", remat=False,
      head_hidden=256,
      # Two stride-2 convolutions (64 -> 16 px) then 2x2 patches: 64 image tokens that carry
      # local shape features and a fine enough grid to localise on.
      image=dict(stem_channels=(16, 32), patch_size=2, width=128, layers=3, heads=4,
                 mlp_ratio=2.0),
      # Expression encoder (bidirectional, cross-attending to the image tokens in every block).
      text=dict(width=128, layers=2, heads=4, mlp_ratio=2.0, pool="first")))

  # DETR's matched-box loss weights (regression head only).
  c.loss = ml_collections.ConfigDict(dict(l1_weight=5.0, giou_weight=2.0))

  # Warm start (mmjax/train/warm_start.py): --config.init_from.workdir=runs/clip copies the image
  # tower of a trained configs/clip_shapeworld.py run (same ViT) into this model before step 0.
  c.init_from = ml_collections.ConfigDict(dict(workdir="", config="", step=-1,
                                               params=("image_encoder:image_encoder",)))

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05,
      b1=0.9, b2=0.98, eps=1e-6, clip_grad_norm=1.0))

  # num_examples: test images (one expression each) for acc@0.5 / acc@0.75 / mean IoU.
  c.eval = ml_collections.ConfigDict(dict(num_examples=500, batch_size=100))
  return c
