"""CLIP trained from scratch on a user's own image-text data: a JSONL folder of real images.

  python experiments/clip_digits/make_data.py --out data/digits
  mmjax train --config configs/clip_digits.py --workdir runs/clip_digits

The data are scikit-learn's 1,797 handwritten digit scans (UCI), written as JSONL + PNG by the
script above; any folder in that format works (--config.data.path=DIR). Everything but the data
section and the zero-shot classes is configs/clip_shapeworld.py. 20% of the records are held out
(seeded), the text tokenizer is a byte-level BPE trained on the training captions, and zero-shot
accuracy is measured on the held-out images against the ten digit names.
"""
import ml_collections

import clip_shapeworld

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def get_config() -> ml_collections.ConfigDict:
  c = clip_shapeworld.get_config()
  c.total_steps = 400
  c.eval_every = 100
  c.checkpoint_every = 200
  c.data.update(dict(name="jsonl", path="data/digits", eval_fraction=0.2, image_size=32,
                     tokenizer="bpe", vocab_size=512))
  c.eval.update(dict(class_names=DIGIT_NAMES, templates=("a handwritten digit {}.",),
                     zero_shot_images=1000, retrieval_images=1000))
  return c
