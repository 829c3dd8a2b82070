"""ShapeWorld: a deterministic procedural image-text data set (a Grain random-access source).

Example i of split s is a pure function of (seed, s, i): it is drawn from
`np.random.default_rng([seed, split_id, i])`, so any example can be regenerated anywhere, in any
order, on any host, with no state and no files. Each image holds 1-3 objects (shape, colour,
size, position) drawn anti-aliased on a noisy dark-grey background, with five captions
(paraphrases, incl. spatial relations), structured labels and boxes, questions/answers and a
referring expression, so captioning, retrieval, VQA, grounding and generation read one source.

Compositional zero-shot split: the (colour, shape) pairs in `HELDOUT_COMBOS` never occur in the
train split (in no object of any image, nor in its text); val/test draw all 48 pairs uniformly.
"""
from __future__ import annotations

import operator
import re

import numpy as np

from mmjax.data import shapeworld_render as render_lib
from mmjax.data import shapeworld_text as text_lib
from mmjax.data.shapeworld_render import SHAPES
from mmjax.data.shapeworld_text import COLOURS, SIZES, VOCAB  # noqa: F401  (re-exported)

SPLITS = ("train", "val", "test")
MAX_OBJECTS = 3
NUM_CAPTIONS = 5
# Longest caption in word-tokenizer tokens ("from left to right, a small magenta triangle, a
# small ... and a large ... triangle."): a text context of MAX_CAPTION_TOKENS + 2 (bos, eos)
# never truncates. Questions are at most 14 tokens.
MAX_CAPTION_TOKENS = 20

# Well-separated RGB values (index-aligned with COLOURS); each object gets +-12 jitter.
RGB = np.array([(230, 35, 35), (40, 200, 60), (45, 85, 245), (245, 225, 40), (225, 50, 225),
                (40, 225, 235), (250, 140, 20), (245, 245, 245)], np.float32)
# Extent (larger bbox side) as a fraction of the image side: small and large never overlap.
SIZE_RANGES = ((0.20, 0.28), (0.36, 0.48))
NOISE_AMPLITUDE = 6.0  # Uniform per-pixel, per-channel noise in +-6 grey levels.
_CANDIDATES = 32  # Centres tried at once per object by the rejection sampler.

HELDOUT_COMBOS = (("red", "star"), ("green", "circle"), ("blue", "triangle"),
                  ("yellow", "cross"), ("magenta", "square"), ("cyan", "diamond"),
                  ("orange", "triangle"), ("white", "square"))
_HELDOUT_IDS = frozenset((COLOURS.index(c), SHAPES.index(s)) for c, s in HELDOUT_COMBOS)

_AN_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")
ZERO_SHOT_TEMPLATES = ("a {c}.", "a picture of a {c}.", "there is a {c}.", "a small {c}.",
                       "a large {c}.")


def zero_shot_prompts() -> list[str]:
  """Every class in every template, class-major (row `class * len(TEMPLATES) + template`).

  Use these rather than `template.format(c=name)`: they fix the article ("an orange circle")
  exactly as the training captions write it.
  """
  return [_AN_BEFORE_VOWEL.sub("an ", t.format(c=name)) for name in class_names()
          for t in ZERO_SHOT_TEMPLATES]


def class_index(colour: int, shape: int) -> int:
  """The (colour, shape) class index `colour * len(SHAPES) + shape`."""
  return colour * len(SHAPES) + shape


def class_names() -> list[str]:
  """["red circle", "red square", ...]: entry `colour * len(SHAPES) + shape`."""
  return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def heldout_mask() -> np.ndarray:
  """bool `[len(COLOURS) * len(SHAPES)]`: True for the held-out (colour, shape) classes."""
  mask = np.zeros(len(COLOURS) * len(SHAPES), bool)
  for colour, shape in _HELDOUT_IDS:
    mask[class_index(colour, shape)] = True
  return mask


def is_heldout_class(index: int) -> bool:
  """Whether class `index` (see `class_names`) is held out of the train split."""
  return divmod(int(index), len(SHAPES)) in _HELDOUT_IDS


class ShapeWorld:
  """Grain-compatible random-access source: `len(ds)`, `ds[i]` -> dict of numpy values.

  Item keys (M = `num_objects[1]`, S = `image_size`):
    image: uint8 `[S, S, 3]`.
    captions: tuple of 5 distinct str; caption 0 is the canonical description.
    num_objects: int32 `[]`.
    shape, colour, size: int32 `[M]`, indices into SHAPES/COLOURS/SIZES, -1 padded.
    boxes: float32 `[M, 4]`, tight (x0, y0, x1, y1) in [0, 1] image coordinates, 0 padded.
    questions, answers: tuples of 5 str (count, colour, shape, yes/no existence, yes/no
      relation -- or a size question for one-object images); answers are single words.
    referring: str, e.g. "the small red circle"; referring_box: float32 `[4]`.
    label: int32 `[]`, the (colour, shape) class of the FIRST object (see `class_names`).
  """

  def __init__(self, split: str = "train", length: int = 100_000, seed: int = 0,
               image_size: int = 64, num_objects: tuple[int, int] = (1, 3)):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if operator.index(length) < 0:
      raise ValueError(f"length must be >= 0, got {length}")
    if operator.index(image_size) < 16:
      raise ValueError(f"image_size must be an int >= 16, got {image_size}")
    lo, hi = (operator.index(n) for n in num_objects)
    if not 1 <= lo <= hi <= MAX_OBJECTS:
      raise ValueError(f"num_objects must be (lo, hi) with 1 <= lo <= hi <= {MAX_OBJECTS}, "
                       f"got {tuple(num_objects)}")
    self.split, self.length, self.seed = split, int(length), operator.index(seed)
    self.image_size, self.num_objects = int(image_size), (lo, hi)
    self.max_objects = hi
    self._split_id = SPLITS.index(split)
    all_combos = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    self.combos = [c for c in all_combos if split != "train" or c not in _HELDOUT_IDS]

  def __repr__(self) -> str:
    return (f"ShapeWorld(split={self.split!r}, length={self.length}, seed={self.seed}, "
            f"image_size={self.image_size}, num_objects={self.num_objects})")

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index) -> dict:
    index = operator.index(index)
    if not 0 <= index < self.length:
      raise IndexError(f"ShapeWorld index {index} out of range [0, {self.length})")
    rng = np.random.default_rng([self.seed, self._split_id, index])
    size = self.image_size
    objs, draw = self._layout(rng)
    background = rng.uniform(20.0, 70.0)
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8).astype(np.float32)
    noise = (noise - 127.5) * (NOISE_AMPLITUDE / 127.5)
    image = render_lib.render(size, background, noise, draw)

    captions = text_lib.captions(objs, rng, NUM_CAPTIONS)
    questions, answers = text_lib.questions(objs, rng, self.combos)
    referring, ref_k = text_lib.referring(objs, rng)

    m, n = self.max_objects, len(objs)
    pad = lambda values: np.array(list(values) + [-1] * (m - n), np.int32)
    boxes = np.zeros((m, 4), np.float32)
    boxes[:n] = [o.box for o in objs]
    return {
        "image": image,
        "captions": captions,
        "num_objects": np.int32(n),
        "shape": pad(o.shape for o in objs),
        "colour": pad(o.colour for o in objs),
        "size": pad(o.size for o in objs),
        "boxes": boxes,
        "questions": questions,
        "answers": answers,
        "referring": referring,
        "referring_box": boxes[ref_k].copy(),
        "label": np.int32(class_index(objs[0].colour, objs[0].shape)),
    }

  def _place(self, halves: np.ndarray, unit: np.ndarray, gap: float):
    """Centres [(cx, cy)] for objects of half-extents `halves` `[n]`, or None if they do not fit.

    `unit`: `[n, C, 2]` uniform draws; object k takes its first candidate centre that keeps its
    bounding square `gap` px away (along x or y) from every object already placed.
    """
    side = self.image_size
    placed = {}
    for k in np.argsort(-halves, kind="stable"):  # Largest first: they are hardest to fit.
      half = halves[k]
      centres = half + 1 + unit[k] * (side - 2 * half - 2)
      free = np.ones(len(centres), bool)
      for j, (x, y) in placed.items():
        far = half + halves[j] + gap
        free &= (np.abs(centres[:, 0] - x) >= far) | (np.abs(centres[:, 1] - y) >= far)
      if not free.any():
        return None
      placed[int(k)] = tuple(float(v) for v in centres[np.argmax(free)])
    return [placed[k] for k in range(len(halves))]

  def _layout(self, rng: np.random.Generator):
    """Samples objects and non-overlapping positions (rejection sampling).

    Objects' bounding squares are separated by >= 3% of the side along x or y, so every pair
    has a true spatial relation. Positions are redrawn up to 10 times per size draw; after 20
    failures all objects are drawn small.
    """
    side = self.image_size
    gap = 0.03 * side
    count = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
    combos = rng.integers(len(self.combos), size=count)
    sizes = rng.integers(2, size=count)
    placed = None
    for attempt in range(30):
      if attempt == 20:  # Rare (e.g. three large objects): fall back to all small.
        sizes = np.zeros(count, np.int64)
      if attempt % 10 == 0:
        lo, hi = np.array(SIZE_RANGES)[sizes].T
        halves = (lo + (hi - lo) * rng.random(count)) * side / 2
      placed = self._place(halves, rng.random((count, _CANDIDATES, 2)), gap)
      if placed is not None:
        break
    else:
      raise AssertionError(f"could not place {count} objects on a {side}px image")
    placed = [(*self.combos[combos[k]][::-1], int(sizes[k]), cx, cy, float(halves[k]))
              for k, (cx, cy) in enumerate(placed)]
    objs, draw = [], []
    jitter = rng.uniform(-12, 12, (count, 3))
    for (shape, colour, size, cx, cy, half), rgb_jitter in zip(placed, jitter):
      box = (render_lib.UNIT_BOXES[shape] * half + np.array([cx, cy, cx, cy])) / side
      objs.append(text_lib.Obj(shape, colour, size, tuple(float(v) for v in box)))
      rgb = np.clip(RGB[colour] + rgb_jitter, 0, 255).astype(np.float32)
      draw.append((shape, cx, cy, half, rgb))
    return objs, draw
