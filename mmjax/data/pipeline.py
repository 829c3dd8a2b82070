"""Grain input pipelines: image-text training batches with per-host slicing, eval arrays.

The global example stream is a function of (source, seed, shuffle) only -- never of the number
of hosts:

  stream position k (k = 0, 1, ...) -> epoch e = k // N, source index i = perm_e(k % N)

where N = len(source) and perm_e is Grain's index shuffle seeded with (seed + e) (identity when
`shuffle=False`). Global batch j is stream positions [j*G, (j+1)*G) with G = process_count * b,
and host p reads rows [p*b, (p+1)*b) of it, i.e. stream positions j*G + p*b + r, r < b. So
`process_count` hosts with per-host batch b see exactly the global batches of one host with
batch G; batches may straddle epoch boundaries, and only a final partial global batch (finite
`num_epochs`) is dropped.

A row's caption is `captions[0]` ("first") or `captions[c]` with
c = example_rng(seed, e, i, "caption").integers(len(captions)) ("random"): deterministic per
(seed, epoch, index), so a restored iterator reproduces the same batches.

Images come out float32 in [0, 1] (uint8 / 255); the model does any further normalisation.

Bad examples (an unreadable image, an empty caption: any ValueError/OSError while loading one)
stop the pipeline by default (`on_bad_example="error"`). With `on_bad_example="skip"` a bad
example at stream position k is replaced by the next good source index (i + 1, i + 2, ... mod
N), so batches keep their size and the stream stays a pure function of (source, seed); each
skip is counted (`BadExamples`, a warning for the first few) and once more than
`max_bad_fraction` of the examples read were bad the pipeline raises DataError.
"""
from __future__ import annotations

import operator
import sys
import threading
import zlib
from typing import Any

import grain
import numpy as np

from mmjax.data.tokenizer import Tokenizer, check_text
from mmjax.errors import DataError

ON_BAD_EXAMPLE = ("error", "skip")


class BadExamples:
  """Counts the examples a pipeline skipped as bad, out of all it loaded (thread-safe: Grain
  loads with several threads). Counts run slightly ahead of training (prefetching) and start
  at 0 in each process.

  Args:
    max_fraction: the pipeline raises DataError once skipped > max_fraction * max(loaded,
      min_loaded).
    min_loaded: loads before the fraction is judged, so one bad example among the first few
      does not stop a run.
    warn_first: how many skips get a warning line on stderr (then every 100th).
  """

  def __init__(self, max_fraction: float = 0.01, min_loaded: int = 100, warn_first: int = 5):
    if not 0.0 <= max_fraction < 1.0:
      raise ValueError(f"max_bad_fraction must be in [0, 1), got {max_fraction}")
    self.max_fraction, self.min_loaded, self.warn_first = max_fraction, min_loaded, warn_first
    self.loaded = self.skipped = 0
    self.last_error = ""
    self._lock = threading.Lock()

  def count_good(self) -> None:
    with self._lock:
      self.loaded += 1

  def count_bad(self, index: int, error: BaseException) -> None:
    """Counts example `index` as skipped; DataError if too many were."""
    message = str(error)
    if not message.startswith(f"example {index}"):
      message = f"example {index}: {message}"
    with self._lock:
      self.loaded += 1
      self.skipped += 1
      self.last_error = message
      skipped, loaded = self.skipped, self.loaded
    if skipped <= self.warn_first or skipped % 100 == 0:
      print(f"mmjax: warning: skipping a bad example ({message}); {skipped} skipped of "
            f"{loaded} loaded", file=sys.stderr, flush=True)
    if skipped > self.max_fraction * max(loaded, self.min_loaded):
      raise DataError(f"{skipped} of {loaded} examples loaded were bad, more than "
                      f"data.max_bad_fraction={self.max_fraction}; the last: {self.last_error}")

  def counts(self) -> dict[str, int]:
    """{"data_bad_examples": skipped, "data_examples_loaded": loaded}, for metrics.jsonl."""
    with self._lock:
      return {"data_bad_examples": self.skipped, "data_examples_loaded": self.loaded}


class _SkipBad:
  """`load_example` that replaces a bad example by the next good source index (see above)."""

  def __init__(self, load_example, source_length: int, bad_examples: BadExamples):
    self.load_example, self.length, self.bad = load_example, source_length, bad_examples

  def __call__(self, position: int, index: int):
    for offset in range(self.length):
      candidate = (index + offset) % self.length
      try:
        example = self.load_example(position, candidate)
      except (ValueError, OSError) as e:
        self.bad.count_bad(candidate, e)
        continue
      self.bad.count_good()
      return example
    raise DataError(f"every one of the {self.length} examples is bad; the last: "
                    f"{self.bad.last_error}")


def batch_iterator(dataset: grain.IterDataset):
  """`iter(dataset)`, carrying the dataset's `bad_examples` (a BadExamples or None) along, so
  the trainer can write the counts without knowing the task."""
  iterator = iter(dataset)
  iterator.bad_examples = getattr(dataset, "bad_examples", None)
  return iterator


def _captions(item: dict, index: int) -> tuple[str, ...]:
  """The item's captions as a non-empty tuple of non-empty strings, or a ValueError."""
  captions = item.get("captions")
  if captions is None:
    raise ValueError(f"example {index}: no 'captions' key (keys: {sorted(item)})")
  if isinstance(captions, str):
    captions = (captions,)
  captions = tuple(captions)
  if not captions:
    raise ValueError(f"example {index}: 'captions' is empty; expected at least one caption")
  for k, caption in enumerate(captions):
    check_text(caption, f"example {index}: caption {k}")
  return captions


def check_image(image: Any, index: int, image_shape: tuple[int, int, int] | None) -> np.ndarray:
  """Returns `image` as uint8 `[H, W, 3]` or raises ValueError naming `index`.

  `image_shape` fixes (H, W, 3); None accepts any H, W.
  """
  image = np.asarray(image)
  expected = "[H, W, 3]" if image_shape is None else f"{list(image_shape)}"
  if image.dtype != np.uint8:
    raise ValueError(f"example {index}: image has dtype {image.dtype}, expected uint8 "
                     f"with shape {expected}")
  if image.ndim != 3 or image.shape[-1] != 3 or (image_shape is not None
                                                   and image.shape != tuple(image_shape)):
    raise ValueError(f"example {index}: image has shape {list(image.shape)}, expected "
                     f"{expected} (uint8 RGB)")
  return image


def _image_shape(source) -> tuple[int, int, int]:
  """(H, W, 3) every image of `source` must have: its `image_size`, else example 0's shape."""
  size = getattr(source, "image_size", None)
  if size is not None:
    return (size, size, 3)
  return check_image(source[0]["image"], 0, None).shape


class _HostRows(grain.MapDataset):
  """Host `p`'s rows of each global batch: host row h -> (stream position k, parent[k])."""

  def __init__(self, parent: grain.MapDataset, batch_size: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._b, self._p, self._g = batch_size, process_index, batch_size * process_count
    parent_len = len(parent)
    self._length = (parent_len // self._g) * batch_size if parent_len < sys.maxsize else (
        sys.maxsize // self._g * batch_size)

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f"_HostRows(b={self._b}, p={self._p}, G={self._g})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._b)
    position = batch * self._g + self._p * self._b + row
    return position, self._parent[position]


def example_rng(seed: int, epoch: int, index: int, purpose: str) -> np.random.Generator:
  """The generator for a per-example random choice (a caption, a question) in epoch `epoch`.

  Deterministic in (seed, epoch, index, purpose). `purpose` names the choice and salts the
  stream: unsalted, default_rng([seed, 0, index]) would be ShapeWorld's own generator of train
  example `index` (split id 0), so in epoch 0 the choice would repeat the image's first draw
  (e.g. its object count) instead of being independent of the image.
  """
  return np.random.default_rng([seed, epoch, index, zlib.crc32(purpose.encode())])


class _LoadExample:
  """(stream position, source index) -> {"image" float32 [H,W,3], "text" [L], "label" []}."""

  def __init__(self, source, tokenizer: Tokenizer, context_length: int, seed: int,
               caption_choice: str, image_shape):
    self.source, self.tokenizer, self.context_length = source, tokenizer, context_length
    self.seed, self.caption_choice, self.image_shape = seed, caption_choice, image_shape
    self.epoch_length = len(source)

  def __call__(self, position: int, index: int):
    item = self.source[index]
    image = check_image(item.get("image"), index, self.image_shape)
    captions = _captions(item, index)
    if self.caption_choice == "first" or len(captions) == 1:
      caption = captions[0]
    else:
      epoch = position // self.epoch_length
      choice = example_rng(self.seed, epoch, index, "caption").integers(len(captions))
      caption = captions[choice]
    text = self.tokenizer.encode_batch([caption], self.context_length)[0]
    return {"image": image.astype(np.float32) / np.float32(255), "text": text,
            "label": np.int32(item.get("label", -1))}


def example_batches(source, load_example, *, batch_size: int, seed: int, shuffle: bool = True,
                    num_epochs: int | None = None, process_index: int = 0,
                    process_count: int = 1, num_threads: int = 2,
                    prefetch_batches: int = 4, on_bad_example: str = "error",
                    max_bad_fraction: float = 0.01) -> grain.IterDataset:
  """Per-host batches of `load_example(position, index)` dicts, in the stream order above.

  Any task plugs its own example loader into the same shuffling, per-host slicing, batching and
  checkpointable iterator state. `load_example` must be a pure function of (stream position k,
  source index i), so a restored iterator reproduces the same batches.

  Args:
    source: random-access source (`len`, `[i]`).
    load_example: callable (position: int, index: int) -> dict of numpy arrays of fixed shapes.
    batch_size: rows per batch ON THIS HOST (b); the global batch is `process_count * b`.
    seed: shuffle seed. shuffle: reshuffle each epoch or keep source order.
    num_epochs: None repeats forever.
    process_index, process_count: this host and the number of hosts.
    num_threads, prefetch_batches: Grain read threads and batches buffered ahead.
    on_bad_example: "error" (a bad example stops the pipeline) or "skip" (module docstring).
    max_bad_fraction: with "skip", the fraction of bad examples that stops it.

  Returns:
    IterDataset yielding dicts of `[b, ...]` arrays, with `get_state()` / `set_state()`, and
    `bad_examples` (the BadExamples counter with "skip", else None; see `batch_iterator`).
  """
  batch_size, process_index, process_count = (
      operator.index(batch_size), operator.index(process_index), operator.index(process_count))
  if batch_size < 1:
    raise ValueError(f"batch_size (per host) must be >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count={process_count}), "
                     f"got {process_index}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
  if len(source) == 0:
    raise ValueError(f"source {source!r} is empty")
  if on_bad_example not in ON_BAD_EXAMPLE:
    raise ValueError(f"on_bad_example (data.on_bad_example) must be one of {ON_BAD_EXAMPLE}, "
                     f"got {on_bad_example!r}")
  bad_examples = None
  if on_bad_example == "skip":
    bad_examples = BadExamples(max_bad_fraction)
    load_example = _SkipBad(load_example, len(source), bad_examples)
  global_batch = batch_size * process_count
  if num_epochs is not None and len(source) * num_epochs < global_batch:
    raise ValueError(f"{num_epochs} epoch(s) of {len(source)} examples give no full global batch "
                     f"of {global_batch} (= {process_count} hosts x {batch_size})")
  indices = grain.MapDataset.source(range(len(source)))
  if shuffle:
    indices = indices.shuffle(seed=seed)
  indices = indices.repeat(num_epochs)
  rows = _HostRows(indices, batch_size, process_index, process_count)
  batches = rows.map(lambda pair: load_example(pair[0], int(pair[1])))
  batches = batches.batch(batch_size, drop_remainder=True)
  dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                      prefetch_buffer_size=prefetch_batches))
  dataset.bad_examples = bad_examples
  return dataset


def image_text_batches(source, tokenizer: Tokenizer, *, batch_size: int, context_length: int,
                       seed: int, shuffle: bool = True, num_epochs: int | None = None,
                       process_index: int = 0, process_count: int = 1,
                       caption_choice: str = "random", num_threads: int = 2,
                       prefetch_batches: int = 4, on_bad_example: str = "error",
                       max_bad_fraction: float = 0.01) -> grain.IterDataset:
  """Per-host (image, caption) batches as a Grain IterDataset (see the module docstring).

  Args:
    source: random-access source whose items hold "image" uint8 `[H, W, 3]`, "captions"
      (str or sequence of str) and optionally "label" (int; -1 if absent).
    tokenizer: a `Tokenizer`.
    batch_size: rows per batch ON THIS HOST (b); the global batch is `process_count * b`.
    context_length: text length L.
    seed: shuffle and caption-choice seed.
    shuffle: reshuffle each epoch (Grain index shuffle) or keep source order.
    num_epochs: None repeats forever.
    process_index, process_count: this host and the number of hosts.
    caption_choice: "random" (per (seed, epoch, index)) or "first".
    num_threads, prefetch_batches: Grain read threads and batches buffered ahead.
    on_bad_example, max_bad_fraction: as `example_batches`.

  Returns:
    IterDataset; `iter(ds)` yields {"image": float32 `[b, H, W, 3]` in [0, 1], "text": int32
    `[b, L]`, "label": int32 `[b]`} and has `get_state()` / `set_state()` (JSON-able dict)
    for checkpoints.
  """
  if caption_choice not in ("random", "first"):
    raise ValueError(f"caption_choice must be 'random' or 'first', got {caption_choice!r}")
  if len(source) == 0:
    raise ValueError(f"source {source!r} is empty")
  load = _LoadExample(source, tokenizer, context_length, seed, caption_choice,
                      _image_shape(source))
  return example_batches(source, load, batch_size=batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, process_index=process_index,
                         process_count=process_count, num_threads=num_threads,
                         prefetch_batches=prefetch_batches, on_bad_example=on_bad_example,
                         max_bad_fraction=max_bad_fraction)


def eval_arrays(source, tokenizer: Tokenizer, context_length: int, n: int) -> dict[str, Any]:
  """The first `n` examples with ALL their captions, as host arrays (C captions per image).

  Returns:
    image: float32 `[n, H, W, 3]` in [0, 1]; text: int32 `[T, L]` (T = total captions, 5n for
    ShapeWorld); text_to_image: int32 `[T]` (caption k of image i is row C*i + k when every
    image has C captions); label: int32 `[n]`; captions: list of T str.
  """
  n = operator.index(n)
  if not 0 < n <= len(source):
    raise ValueError(f"n must be in [1, len(source)={len(source)}], got {n}")
  image_shape = _image_shape(source)
  images, captions, owners, labels = [], [], [], []
  for index in range(n):
    item = source[index]
    images.append(check_image(item.get("image"), index, image_shape))
    texts = _captions(item, index)
    captions.extend(texts)
    owners.extend([index] * len(texts))
    labels.append(item.get("label", -1))
  return {
      "image": np.stack(images).astype(np.float32) / np.float32(255),
      "text": tokenizer.encode_batch(captions, context_length),
      "text_to_image": np.asarray(owners, np.int32),
      "label": np.asarray(labels, np.int32),
      "captions": captions,
  }
