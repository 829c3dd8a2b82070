"""A person's own images and captions for `mmjax zero-shot|embed|retrieve`: listing and reading.

- `list_images(folder)`: every file under `folder` (recursively) whose suffix is one of
  `IMAGE_SUFFIXES` (any case), sorted by path; an empty folder is an error.
- `read_image(path, image_size, resize)`: uint8 `[S, S, 3]`, as the training data reads images
  (`mmjax.data.folder.to_square_rgb`: centre crop of the shorter side by default, bicubic). An
  unreadable or truncated file is a `DataError` naming it.
- `read_captions(path)`: the non-empty lines of a UTF-8 text file, one caption each; empty lines
  are skipped with a note; a file with none left is an error.
"""
from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from mmjax.data.folder import to_square_rgb
from mmjax.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def note(message: str) -> None:
  print(f"mmjax: note: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
  print(f"mmjax: warning: {message}", file=sys.stderr, flush=True)


def list_images(folder: str | pathlib.Path) -> list[pathlib.Path]:
  """The image files under `folder` (recursive), sorted; DataError if there are none."""
  folder = pathlib.Path(folder)
  if not folder.exists():
    raise FileNotFoundError(f"image folder {folder} does not exist")
  if not folder.is_dir():
    raise NotADirectoryError(f"--images {folder} is not a folder (expected a folder of "
                             f"{'/'.join(IMAGE_SUFFIXES)} files)")
  paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and
                 p.is_file())
  if not paths:
    raise DataError(f"image folder {folder} holds no image (looked recursively for files "
                    f"ending in {', '.join(IMAGE_SUFFIXES)}, any case)")
  return paths


def _decode(path, image_size: int, resize: str) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as image:
    image.load()  # Decodes now, so a truncated file fails here rather than in a resize.
    return to_square_rgb(image, image_size, resize)


def _why_unreadable(path, error: Exception) -> str:
  return f"cannot read image {path} ({type(error).__name__}: {error})"


def _decode_errors():
  from PIL import Image
  # PIL reports a broken file as OSError (truncated, unidentified), SyntaxError (a corrupt PNG
  # chunk), ValueError, or DecompressionBombError (an image too large to be safe).
  return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image(path: str | pathlib.Path, image_size: int,
               resize: str = "center_crop") -> np.ndarray:
  """The image file `path` as uint8 `[image_size, image_size, 3]`; DataError naming the file if
  it cannot be decoded (truncated, not an image, too large for PIL)."""
  try:
    return _decode(path, image_size, resize)
  except _decode_errors() as e:
    raise DataError(_why_unreadable(path, e)) from None


def readable_images(paths: Sequence[pathlib.Path], image_size: int, resize: str = "center_crop",
                    *, skip_bad: bool = False):
  """Yields `(path, uint8 [S, S, 3])` per readable file of `paths`, in order.

  An unreadable file raises DataError naming it, or with `skip_bad` is skipped with a warning;
  DataError if none is readable.
  """
  kept = 0
  for path in paths:
    try:
      image = _decode(path, image_size, resize)
    except _decode_errors() as e:
      if not skip_bad:
        raise DataError(f"{_why_unreadable(path, e)}; fix or remove it, or pass --skip-bad to "
                        "skip unreadable images") from None
      warn(f"skipping unreadable image {path} ({type(e).__name__}: {e})")
      continue
    kept += 1
    yield path, image
  if not kept:
    raise DataError(f"none of the {len(paths)} image files could be read (see the warnings "
                    "above)")


def read_captions(path: str | pathlib.Path) -> list[str]:
  """The captions of a text file, one per line (surrounding whitespace stripped); empty lines
  are skipped with a note; DataError if no caption is left."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"caption file {path} does not exist (expected a UTF-8 text file, "
                            "one caption per line)")
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise DataError(f"caption file {path} is not UTF-8 text ({e})") from None
  captions = [line.strip() for line in lines if line.strip()]
  empty = [number for number, line in enumerate(lines, 1) if not line.strip()]
  if not captions:
    raise DataError(f"caption file {path} holds no caption ({len(lines)} empty lines); expected "
                    "one caption per line")
  if empty:
    shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
    note(f"skipped {len(empty)} empty line(s) of {path} (line {shown})")
  return captions
