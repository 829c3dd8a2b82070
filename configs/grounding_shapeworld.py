"""Visual grounding on the embedded ShapeWorld data: box of "the small red circle" in 1-3 object
scenes, by a regression head or by coordinate tokens.

  mmjax train --config configs/grounding_shapeworld.py --workdir runs/grounding
  mmjax train --config configs/grounding_shapeworld.py:tokens --workdir runs/grounding_tok

The text after ':' picks the head: "regression" (the default; `RegressionGrounder`: sigmoid
(cx, cy, w, h) from the pooled image-grounded expression encoder) or "tokens" (`Captioner` over
the words + num_bins coordinate tokens).
"""
import ml_collections

import common

HEADS = ("regression", "tokens")


def get_config(head: str = "regression") -> ml_collections.ConfigDict:
  if head not in HEADS:
    raise ValueError(f"configs/grounding_shapeworld.py:HEAD takes HEAD in {HEADS}, got {head!r}")
  c = common.trainer("grounding", batch_size=64, total_steps=600, eval_every=200,
                     checkpoint_every=300)

  # 1-3 objects, so the expression has to pick one. Expressions are 2-5 words ("the small red
  # circle"): BOS + expression + 4 coordinate tokens + EOS fits in 12 tokens.
  c.data = common.shapeworld_data(image_size=64, num_objects=(1, 3), context_length=12)

  # Both heads: the conv-stem ViT of configs/clip_shapeworld.py (64 image tokens, a fine enough
  # grid to localise on) and a 2-layer text transformer of width 128.
  settings = dict(dtype="float32", attention_impl="einsum", remat=False)
  if head == "regression":
    # The expression encoder is bidirectional and cross-attends to the image tokens in every
    # block; its first token feeds a hidden_dim MLP to the box.
    c.model = ml_collections.ConfigDict(dict(
        name="regression_grounder", hidden_dim=256, **settings,
        image_encoder=common.vision_transformer(),
        text_encoder=common.fusion_text_encoder()))
    # DETR's matched-box loss weights.
    c.loss = ml_collections.ConfigDict(dict(l1_weight=5.0, giou_weight=2.0))
  else:
    # The causal decoder reads BOS + expression and emits the 4 quantised corners.
    c.model = ml_collections.ConfigDict(common.captioner(**settings))
    c.num_bins = 32  # coordinate tokens per axis
    # Width in bins of each coordinate's Gaussian target (0: one-hot cross-entropy): 600 steps
    # reach acc@0.5 0.366 at 2.0, 0.344 at 1.0 and 0.162 one-hot (experiments/grounding_shapeworld).
    c.bin_sigma = 2.0

  # Warm start (mmjax/train/warm_start.py): --config.init_from.workdir=runs/clip copies the image
  # tower of a trained configs/clip_shapeworld.py run (same ViT) into this model before step 0.
  c.init_from = common.warm_start()

  c.optim = common.adamw(1e-3)

  # num_examples: test images (one expression each) for acc@0.5 / acc@0.75 / mean IoU.
  c.eval = ml_collections.ConfigDict(dict(num_examples=500, batch_size=100))
  return c
