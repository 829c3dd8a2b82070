"""What a task config's `data` section selects: the image-text source of a split and the tokenizer.

`data.name` picks the source:
  "shapeworld": the embedded procedural data (`data.seed`, `data.num_objects`; splits are
    disjoint streams, so "test" never overlaps "train").
  "jsonl": `data.path`, a JSONL of {"image", "caption"[, "label"]} records or a folder holding
    one (`mmjax.data.folder.ImageTextFolder`). The "test" split is `data.eval_path` when set,
    else a held-out `data.eval_fraction` of the records (a permutation seeded by `data.seed`;
    at least one record), which the "train" split then excludes.
  "tfds": `data.path` is a TFDS name already prepared in `data.tfds.data_dir` (array_record,
    read through `tfds.data_source`; the `data` extra), splits `data.tfds.train_split` /
    `data.tfds.eval_split`, features `data.tfds.image_feature`, `data.tfds.caption_feature`
    ("captions/text" reaches into nested features) and optionally `data.tfds.label_feature`.
Images are resized to `data.image_size` (`data.resize`: "center_crop" or "stretch").

`data.tokenizer` picks the tokenizer: "shapeworld" (the closed ShapeWorld word list), "bpe" (a
byte-level BPE of `data.vocab_size` tokens trained on the train split's captions, the same on
every call for the same data), or a spec of `mmjax.data.tokenizer_factory.build_tokenizer`
("clip", "clip:PATH", "sentencepiece:PATH", "hf:PATH").
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from mmjax.data import folder, shapeworld
from mmjax.data.tokenizer import Tokenizer
from mmjax.errors import ConfigError

SOURCE_NAMES = ("shapeworld", "jsonl", "tfds")
DEFAULT_EVAL_FRACTION = 0.05


class Subset:
  """The examples `indices` of a random-access `source`, in that order (a held-out split)."""

  def __init__(self, source, indices: np.ndarray, name: str):
    self.source, self.indices, self.name = source, np.asarray(indices, np.int64), name

  def __repr__(self) -> str:
    return f"{self.name} of {self.source!r}: {len(self)} examples"

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[int(self.indices[index])]

  def captions(self) -> list[str]:
    """Every caption of the subset's records, in order (no image is read)."""
    return [c for i in self.indices for c in self.source.records[i][1]]


def _get(data: Any, key: str, default: Any = None) -> Any:
  return data.get(key, default) if hasattr(data, "get") else getattr(data, key, default)


def _require_path(data: Any) -> str:
  path = _get(data, "path", "")
  if not path:
    raise ConfigError(f"data.name={data.name!r} needs data.path (a JSONL file or folder for "
                      "'jsonl', a TFDS dataset name for 'tfds')")
  return str(path)


@functools.lru_cache(maxsize=8)
def _folder(path: str, image_size: int, resize: str) -> folder.ImageTextFolder:
  return folder.ImageTextFolder(path, image_size, resize)


def _jsonl_split(data: Any, split: str):
  image_size, resize = int(data.image_size), _get(data, "resize", "center_crop")
  train = _folder(_require_path(data), image_size, resize)
  eval_path = _get(data, "eval_path", "")
  if eval_path:
    return train if split == "train" else _folder(str(eval_path), image_size, resize)
  fraction = float(_get(data, "eval_fraction", DEFAULT_EVAL_FRACTION))
  if not 0 < fraction < 1:
    raise ConfigError(f"data.eval_fraction must be in (0, 1) when data.eval_path is not set, "
                      f"got {fraction}")
  if len(train) < 2:
    raise ConfigError(f"{train.path} has {len(train)} record(s); a held-out split needs >= 2 "
                      "(or set data.eval_path)")
  order = np.random.default_rng(int(_get(data, "seed", 0))).permutation(len(train))
  num_eval = max(1, int(round(fraction * len(train))))
  if split == "train":
    return Subset(train, np.sort(order[num_eval:]), "train split")
  return Subset(train, np.sort(order[:num_eval]), f"held-out {fraction:g} split")


def _feature(features: dict, path: str) -> Any:
  value = features
  for part in path.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise ValueError(f"TFDS example has no feature {path!r} (at {part!r}; it has "
                       f"{sorted(value) if isinstance(value, dict) else type(value).__name__})")
    value = value[part]
  return value


def _tfds_split(data: Any, split: str) -> folder.TfdsImageText:
  tfds_cfg = _get(data, "tfds", {}) or {}
  caption_feature = _get(tfds_cfg, "caption_feature", "caption")
  label_feature = _get(tfds_cfg, "label_feature", "")
  tfds_split = _get(tfds_cfg, "train_split" if split == "train" else "eval_split",
                    "train" if split == "train" else "validation")
  return folder.TfdsImageText(
      _require_path(data), tfds_split, lambda f: _feature(f, caption_feature),
      image_key=_get(tfds_cfg, "image_feature", "image"),
      label_fn=(lambda f: int(_feature(f, label_feature))) if label_feature else None,
      image_size=int(data.image_size), resize=_get(data, "resize", "center_crop"),
      data_dir=_get(tfds_cfg, "data_dir", "") or None)


def image_text_source(data: Any, split: str, length: int | None = None,
                      num_objects: tuple[int, int] | None = None):
  """The `split` ("train" | "test") source of a task's `config.data` (module docstring).

  Args:
    length: ShapeWorld: the number of examples (required). Other sources: at most this many
      (the first ones); None for all.
    num_objects: ShapeWorld only: overrides `data.num_objects` (zero-shot uses single objects).
  Returns:
    A random-access source of {"image": uint8 `[S, S, 3]`, "captions": tuple of str,
    "label": int32}.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  name = data.name
  if name == "shapeworld":
    if length is None:
      raise ValueError("a ShapeWorld source needs a length")
    return shapeworld.ShapeWorld(split=split, length=length, seed=data.seed,
                                 image_size=data.image_size,
                                 num_objects=tuple(num_objects or data.num_objects))
  if name == "jsonl":
    source = _jsonl_split(data, split)
  elif name == "tfds":
    source = _tfds_split(data, split)
  else:
    raise ConfigError(f"data.name must be one of {SOURCE_NAMES}, got {name!r}")
  if length is not None and length < len(source):
    whole = source.source if isinstance(source, Subset) else source
    indices = source.indices[:length] if isinstance(source, Subset) else np.arange(length)
    source = Subset(whole, indices, f"first {length} of the {split} split")
  return source


def train_captions(data: Any) -> list[str]:
  """Every caption of the train split (for training a BPE); JSONL without reading images."""
  source = image_text_source(data, "train")
  if isinstance(source, Subset):
    return source.captions()
  if isinstance(source, folder.ImageTextFolder):
    return [c for _, captions, _ in source.records for c in captions]
  return [c for i in range(len(source)) for c in source[i]["captions"]]


def task_tokenizer(data: Any) -> Tokenizer:
  """The tokenizer `data.tokenizer` names (module docstring); "shapeworld" by default."""
  spec = _get(data, "tokenizer", "shapeworld") or "shapeworld"
  if spec == "shapeworld":
    from mmjax.data.shapeworld_text import shapeworld_tokenizer
    return shapeworld_tokenizer()
  from mmjax.data.tokenizer_factory import build_tokenizer
  if spec == "bpe":
    if data.name == "shapeworld":
      raise ConfigError("data.tokenizer='bpe' trains on a user's captions; ShapeWorld has its "
                        "closed word list (data.tokenizer='shapeworld')")
    return _trained_bpe(data.name, _require_path(data), _get(data, "eval_path", ""),
                        int(_get(data, "vocab_size", 8192)), data)
  return build_tokenizer(spec)


def _trained_bpe(name, path, eval_path, vocab_size, data):
  key = (name, path, eval_path, vocab_size, float(_get(data, "eval_fraction",
                                                       DEFAULT_EVAL_FRACTION)),
         int(_get(data, "seed", 0)))
  if key not in _BPE_CACHE:
    from mmjax.data.tokenizer_factory import build_tokenizer
    _BPE_CACHE[key] = build_tokenizer("bpe", train_texts=train_captions(data),
                                      vocab_size=vocab_size)
  return _BPE_CACHE[key]


_BPE_CACHE: dict[tuple, Tokenizer] = {}
