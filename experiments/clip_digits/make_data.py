"""Writes scikit-learn's handwritten digits (1,797 real 8x8 scans, UCI) as a JSONL + PNG folder.

  python experiments/clip_digits/make_data.py --out data/digits

Each record: {"image": "images/0001.png", "caption": [3 captions], "label": digit}. Images are
the 8x8 scans (16 grey levels) scaled to 0-255 and saved at 32x32 (nearest), so the folder is a
user's own image-text data in mmjax's JSONL format (mmjax/data/folder.py), not ShapeWorld.
"""
import argparse
import json
import pathlib

import numpy as np
from PIL import Image

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = ("a handwritten digit {name}.", "the number {digit}, written by hand.",
            "a scan of a handwritten {name}.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="data/digits")
  args = parser.parse_args()
  from sklearn.datasets import load_digits
  digits = load_digits()
  out = pathlib.Path(args.out)
  (out / "images").mkdir(parents=True, exist_ok=True)
  with open(out / "digits.jsonl", "w", encoding="utf-8") as f:
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
      pixels = np.round(image / 16.0 * 255.0).astype(np.uint8)
      Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(out / "images" / f"{i:04d}.png")
      captions = [c.format(name=NAMES[label], digit=int(label)) for c in CAPTIONS]
      f.write(json.dumps({"image": f"images/{i:04d}.png", "caption": captions,
                          "label": int(label)}) + "\n")
  print(f"wrote {len(digits.target)} records to {out / 'digits.jsonl'}")


if __name__ == "__main__":
  main()
