"""User image-text data: a JSONL of (image path, caption(s)) pairs, or a TFDS data source.

Both are random-access sources with ShapeWorld's item keys ("image" uint8 `[S, S, 3]`,
"captions" tuple of str, "label" int32), so `pipeline.image_text_batches` reads them unchanged.

JSONL format, one object per line (blank lines ignored):
  {"image": "images/0001.jpg", "caption": "a dog on a sofa"}
  {"image": "images/0002.png", "caption": ["two cats", "cats asleep"], "label": 3}
Image paths are relative to the JSONL file's folder (absolute paths are kept). The file is
parsed and validated when the source is built (bad JSON, missing keys, empty captions fail
then, naming the line); images are decoded on access (an unreadable image fails naming the
example and the file).
"""
from __future__ import annotations

import json
import operator
import pathlib
from typing import Any, Callable

import numpy as np

RESIZE_MODES = ("center_crop", "stretch")


def to_square_rgb(image, image_size: int, resize: str = "center_crop") -> np.ndarray:
  """A PIL image or uint8 array `[H, W(, C)]` -> uint8 `[image_size, image_size, 3]`.

  "center_crop" scales the shorter side to `image_size` and crops the centre (keeps the aspect
  ratio); "stretch" resizes both sides. Bicubic resampling. 16-bit and 32-bit greyscale images
  (PIL modes "I;16*", "I", "F") are scaled to 8 bits by their type's range (PIL's own RGB
  conversion would clip them to white); palette and alpha images are flattened to RGB.
  """
  from PIL import Image
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  if image.mode.startswith("I;16") or image.mode in ("I", "F"):
    image = Image.fromarray(_wide_grey_to_uint8(np.asarray(image), image.mode))
  image = image.convert("RGB")
  width, height = image.size
  if resize == "center_crop":
    scale = image_size / min(width, height)
    width, height = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - image_size) // 2, (height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
  else:
    image = image.resize((image_size, image_size), Image.BICUBIC)
  return np.asarray(image, np.uint8)


def _wide_grey_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
  """A 16/32-bit integer or float greyscale array -> uint8 by its range: 16-bit by 65535 (also
  mode "I" holding only values in [0, 65535], how PIL opens many 16-bit files), other 32-bit
  integers by the int32 range, floats as values in [0, 1] (clipped)."""
  if mode == "F":
    values = np.clip(pixels.astype(np.float64), 0.0, 1.0)
  elif mode.startswith("I;16") or (pixels.size and pixels.min() >= 0 and pixels.max() <= 65535):
    values = pixels.astype(np.float64) / 65535.0
  else:
    values = (pixels.astype(np.float64) - np.iinfo(np.int32).min) / (2.0 ** 32 - 1)
  return np.round(values * 255.0).astype(np.uint8)


def _parse_captions(value: Any, where: str) -> tuple[str, ...]:
  captions = (value,) if isinstance(value, str) else value
  if not isinstance(captions, (list, tuple)) or not captions:
    raise ValueError(f"{where}: 'caption' must be a non-empty str or a non-empty list of str, "
                     f"got {value!r}")
  for k, caption in enumerate(captions):
    if not isinstance(caption, str) or not caption.strip():
      raise ValueError(f"{where}: caption {k} is empty or not a str ({caption!r}); expected "
                       f"non-empty text")
  return tuple(captions)


class ImageTextFolder:
  """Random-access source over a JSONL of image paths and captions (see the module docstring).

  Args:
    path: the .jsonl file, or a folder holding exactly one .jsonl file.
    image_size: side S of the square uint8 images returned.
    resize: "center_crop" (default) or "stretch".
  """

  def __init__(self, path: str | pathlib.Path, image_size: int = 64,
               resize: str = "center_crop"):
    path = pathlib.Path(path)
    if path.is_dir():
      found = sorted(path.glob("*.jsonl"))
      if len(found) != 1:
        raise ValueError(f"folder {path} must hold exactly one .jsonl file, found "
                         f"{[p.name for p in found]}")
      path = found[0]
    if not path.is_file():
      raise ValueError(f"{path} is not a file (expected a JSONL of image/caption records)")
    if resize not in RESIZE_MODES:
      raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if operator.index(image_size) < 1:
      raise ValueError(f"image_size must be >= 1, got {image_size}")
    self.path, self.image_size, self.resize = path, int(image_size), resize
    self.records: list[tuple[pathlib.Path, tuple[str, ...], int]] = []
    with open(path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path}:{line_no}"
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or "image" not in record or "caption" not in record:
          raise ValueError(f"{where}: expected an object with keys 'image' and 'caption', got "
                           f"{line.strip()[:200]}")
        if not isinstance(record["image"], str) or not record["image"]:
          raise ValueError(f"{where}: 'image' must be a non-empty path string")
        captions = _parse_captions(record["caption"], where)
        label = record.get("label", -1)
        if not isinstance(label, int):
          raise ValueError(f"{where}: 'label' must be an int, got {label!r}")
        self.records.append((path.parent / record["image"], captions, label))

  def __repr__(self) -> str:
    return f"ImageTextFolder({str(self.path)!r}, {len(self)} examples, {self.image_size}px)"

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index) -> dict:
    from PIL import Image, UnidentifiedImageError
    index = operator.index(index)
    if not 0 <= index < len(self.records):
      raise IndexError(f"index {index} out of range [0, {len(self.records)})")
    image_path, captions, label = self.records[index]
    try:
      with Image.open(image_path) as image:
        array = to_square_rgb(image, self.image_size, self.resize)
    except (OSError, UnidentifiedImageError, ValueError) as e:
      raise ValueError(f"example {index}: cannot read image {image_path} "
                       f"({type(e).__name__}: {e})") from None
    return {"image": array, "captions": captions, "label": np.int32(label)}


class TfdsImageText:
  """Random-access image-text source over `tfds.data_source` (array_record; no TF at run time).

  Args:
    name: TFDS name, e.g. "coco_captions".
    split: e.g. "train", "validation[:1000]".
    captions_fn: feature dict -> str or sequence of str (bytes are decoded as UTF-8).
    image_key: feature holding the image (uint8 `[H, W, 3]` or `[H, W, 1]`).
    label_fn: feature dict -> int, or None for -1.
    image_size, resize: as `ImageTextFolder`.
    data_dir: TFDS data directory (the data must already be prepared there).
  """

  def __init__(self, name: str, split: str, captions_fn: Callable[[dict], Any], *,
               image_key: str = "image", label_fn: Callable[[dict], int] | None = None,
               image_size: int = 64, resize: str = "center_crop", data_dir: str | None = None):
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError("TfdsImageText needs tensorflow_datasets: pip install "
                        "'mmjax[data]' (tensorflow-datasets)") from e
    self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.name, self.split, self.image_key = name, split, image_key
    self.captions_fn, self.label_fn = captions_fn, label_fn
    self.image_size, self.resize = int(image_size), resize

  def __repr__(self) -> str:
    return f"TfdsImageText({self.name!r}, {self.split!r}, {len(self)} examples)"

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index) -> dict:
    index = operator.index(index)
    features = self.source[index]
    if self.image_key not in features:
      raise ValueError(f"{self.name} example {index}: no image feature {self.image_key!r} "
                       f"(features: {sorted(features)})")
    captions = self.captions_fn(features)
    captions = [captions] if isinstance(captions, (str, bytes)) else list(captions)
    captions = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions]
    captions = _parse_captions(captions, f"{self.name} example {index}")
    label = -1 if self.label_fn is None else int(self.label_fn(features))
    image = to_square_rgb(np.asarray(features[self.image_key], np.uint8), self.image_size,
                          self.resize)
    return {"image": image, "captions": captions, "label": np.int32(label)}
