"""Small VQA model on the embedded ShapeWorld data (1-3 objects, 5 questions per image).

  mmjax train --config configs/vqa_shapeworld.py --workdir runs/vqa
  mmjax train --config configs/vqa_shapeworld.py:generative --workdir runs/vqa_gen

The text after ':' picks the head: "classifier" (the default; `VQAClassifier` over the answer
list) or "generative" (`Captioner`, constrained greedy decoding to the answer list).
"""
import ml_collections

import common

HEADS = ("classifier", "generative")


def get_config(head: str = "classifier") -> ml_collections.ConfigDict:
  if head not in HEADS:
    raise ValueError(f"configs/vqa_shapeworld.py:HEAD takes HEAD in {HEADS}, got {head!r}")
  c = common.trainer("vqa", batch_size=128, total_steps=600, eval_every=150,
                     checkpoint_every=300)

  # Questions are at most 14 words: BOS + question + answer + EOS fits in 18 tokens.
  c.data = common.shapeworld_data(image_size=64, num_objects=(1, 3), context_length=18)

  # Both heads: the conv-stem ViT of configs/clip_shapeworld.py (64 image tokens with local
  # shape features) and a 2-layer text transformer of width 128.
  settings = dict(dtype="float32", attention_impl="einsum", remat=False)
  if head == "classifier":
    # The question encoder is bidirectional and cross-attends to the image tokens in every
    # block; its first token feeds a hidden_dim MLP over the answers.
    c.model = ml_collections.ConfigDict(dict(
        name="vqa_classifier", hidden_dim=256, **settings,
        image_encoder=common.vision_transformer(),
        question_encoder=common.fusion_text_encoder()))
  else:
    # The causal decoder reads BOS + question and answers; the prompt is masked out of the loss.
    c.model = ml_collections.ConfigDict(common.captioner(**settings))

  # Warm start (mmjax/train/warm_start.py): --config.init_from.workdir=runs/clip copies the image
  # tower of a trained configs/clip_shapeworld.py run (same ViT) into this model before step 0.
  c.init_from = common.warm_start()

  c.optim = common.adamw(1e-3)

  # num_examples: test questions (all 5 questions of num_examples / 5 images).
  c.eval = ml_collections.ConfigDict(dict(num_examples=1000, batch_size=64))
  return c
