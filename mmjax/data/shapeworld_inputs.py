"""What every ShapeWorld task does the same way: its data source, its training batches, the
checks of a host batch, the dummy inputs that initialise an (image, tokens) model and the text
tower fields the tokenizer fixes.

`data` below is a task config's `data` section (name, seed, image_size, num_objects,
train_length, context_length) and `config` the whole task config (batch_size, seed, data).
The checks raise ValueError naming the step, the field, what it was and what was expected.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from mmjax.data import pipeline, shapeworld
from mmjax.data.sources import image_text_source
from mmjax.data.tokenizer import Tokenizer


def shapeworld_source(data: Any, split: str, length: int,
                      num_objects=None) -> shapeworld.ShapeWorld:
  """The `split` ShapeWorld source of `length` examples from the task's `config.data`
  (name, seed, image_size, num_objects; `num_objects` overrides the last): for the tasks whose
  examples need ShapeWorld's scene annotations (questions, boxes). The others read any source
  through `mmjax.data.sources.image_text_source`."""
  if data.name != "shapeworld":
    raise ValueError(f"data.name must be 'shapeworld' for this task (its examples are built "
                     f"from ShapeWorld's scene annotations: questions, boxes), got "
                     f"{data.name!r}")
  return shapeworld.ShapeWorld(split=split, length=length, seed=data.seed,
                               image_size=data.image_size,
                               num_objects=tuple(num_objects or data.num_objects))


def bad_example_options(data: Any) -> dict[str, Any]:
  """`on_bad_example` / `max_bad_fraction` of a task's `config.data` (defaults: "error",
  0.01) as keyword arguments of `pipeline.example_batches` / `image_text_batches`."""
  return dict(on_bad_example=data.get("on_bad_example", "error"),
              max_bad_fraction=float(data.get("max_bad_fraction", 0.01)))


def image_text_train_batches(config: Any, tokenizer: Tokenizer,
                             process_index: int, process_count: int,
                             **options) -> Iterator[dict[str, np.ndarray]]:
  """This host's (image, caption tokens) training batches of the task `config`
  (`pipeline.image_text_batches` over the train split; `options` such as caption_choice)."""
  data = config.data
  return pipeline.batch_iterator(pipeline.image_text_batches(
      image_text_source(data, "train", data.train_length), tokenizer,
      batch_size=config.batch_size // process_count, context_length=data.context_length,
      seed=config.seed, process_index=process_index, process_count=process_count,
      **bad_example_options(data), **options))


def example_train_batches(config: Any,
                          make_loader: Callable[[Any], Callable[[int, int], dict]],
                          process_index: int, process_count: int
                          ) -> Iterator[dict[str, np.ndarray]]:
  """This host's training batches of examples built by `make_loader(source)(position, index)`
  over the train split (`pipeline.example_batches`): questions, referring expressions, ..."""
  source = shapeworld_source(config.data, "train", config.data.train_length)
  return pipeline.batch_iterator(pipeline.example_batches(
      source, make_loader(source), batch_size=config.batch_size // process_count,
      seed=config.seed, process_index=process_index, process_count=process_count,
      **bad_example_options(config.data)))


def image_text_init_inputs(data: Any) -> tuple[np.ndarray, np.ndarray]:
  """Zero images float32 `[1, S, S, 3]` and tokens int32 `[1, L]` (S = data.image_size,
  L = data.context_length): the inputs `model.init(rng, images, tokens)` traces an
  (images, tokens) model with."""
  images = np.zeros((1, data.image_size, data.image_size, 3), np.float32)
  tokens = np.zeros((1, data.context_length), np.int32)
  return images, tokens


def text_tower_fields(tokenizer: Tokenizer, context_length: int) -> dict[str, int]:
  """The fields of a `TextTransformer` that the data fixes (vocab_size, context_length, pad_id,
  eos_id): what a task passes to `build_model` for its text tower."""
  return dict(vocab_size=tokenizer.vocab_size, context_length=context_length,
              pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)


def _field(batch: Mapping[str, np.ndarray], key: str, step: int) -> np.ndarray:
  if key not in batch:
    raise ValueError(f"batch at step {step} has no {key!r}; it has keys {sorted(batch)}")
  return batch[key]


def check_images(batch: Mapping[str, np.ndarray], step: int, image_size: int,
                 key: str = "image") -> np.ndarray:
  """`batch[key]` must be float `[B, image_size, image_size, 3]` (values in [0, 1]); returns it."""
  image = _field(batch, key, step)
  if image.ndim != 4 or image.shape[1:] != (image_size, image_size, 3):
    raise ValueError(f"batch at step {step}: {key} has shape {image.shape}, expected "
                     f"[batch, {image_size}, {image_size}, 3] (data.image_size={image_size})")
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"batch at step {step}: {key} has dtype {image.dtype}, expected float in "
                     "[0, 1]")
  return image


def check_caption_batch(batch: Mapping[str, np.ndarray], step: int,
                        data: Any, tokenizer: Tokenizer) -> None:
  """A captioning batch: float images `[B, S, S, 3]` and `text` int `[B, L]` rows of BOS +
  caption (at least one word) + EOS, padded (S = data.image_size, L = data.context_length)."""
  image = check_images(batch, step, data.image_size)
  text = check_tokens(batch, step, "text", data.context_length, len(image),
                      what="BOS + caption + EOS, padded")
  if (text[:, 0] != tokenizer.bos_id).any():
    rows = np.flatnonzero(text[:, 0] != tokenizer.bos_id)
    raise ValueError(f"batch at step {step}: text rows {rows[:8].tolist()} do not start with "
                     f"BOS (id {tokenizer.bos_id}); expected BOS + caption + EOS")
  empty = np.flatnonzero(np.isin(text[:, 1], (tokenizer.eos_id, tokenizer.pad_id)))
  if len(empty):
    raise ValueError(f"batch at step {step}: text rows {empty[:8].tolist()} hold an empty "
                     f"caption; expected at least one word between BOS and EOS")


def check_tokens(batch: Mapping[str, np.ndarray], step: int, key: str, context_length: int,
                 batch_size: int, what: str = "token ids, padded") -> np.ndarray:
  """`batch[key]` must be integer `[batch_size, context_length]`; returns it."""
  tokens = _field(batch, key, step)
  if tokens.ndim != 2 or tokens.shape != (batch_size, context_length):
    raise ValueError(f"batch at step {step}: {key} has shape {tokens.shape}, expected "
                     f"[{batch_size}, {context_length}] ({what}; "
                     f"data.context_length={context_length})")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"batch at step {step}: {key} has dtype {tokens.dtype}, expected int32 ids")
  return tokens
