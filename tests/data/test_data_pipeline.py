"""Grain pipelines: batch contents vs the source, shuffling, caption choice, restore from state,
per-host slicing, bad input, eval arrays."""
import json

import numpy as np
import pytest

from mmjax.data import pipeline
from mmjax.data import shapeworld as sw
from mmjax.data.shapeworld_text import shapeworld_tokenizer

TOK = shapeworld_tokenizer()
CAPTIONS = ("a red circle.", "a blue star.", "a green square.", "a small cross.", "a diamond.")


class IndexSource:
  """Item i: an image filled with i % 256 (first pixel row holds i in base 256), label i."""

  def __init__(self, length, image=None, captions=None):
    self.length, self.image, self.captions = length, image, captions

  def __len__(self):
    return self.length

  def __getitem__(self, i):
    image = np.full((8, 8, 3), i % 256, np.uint8)
    image[0, 0, 0], image[0, 1, 0] = i // 256, i % 256
    if self.image is not None and i == 3:
      image = self.image
    captions = CAPTIONS if self.captions is None or i != 5 else self.captions
    return {"image": image, "captions": captions, "label": i}


def take(dataset, count):
  it = iter(dataset)
  return [next(it) for _ in range(count)]


def batches(source, **kw):
  kw = {"batch_size": 4, "context_length": 8, "seed": 0, **kw}
  return pipeline.image_text_batches(source, TOK, **kw)


def test_unshuffled_rows_equal_the_source():
  src = sw.ShapeWorld("train", 20, seed=1)
  out = take(batches(src, shuffle=False, caption_choice="first", context_length=24), 3)
  for j, batch in enumerate(out):
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 64, 64, 3)
    assert batch["text"].dtype == np.int32 and batch["text"].shape == (4, 24)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
    for r in range(4):
      ex = src[4 * j + r]
      np.testing.assert_array_equal(batch["image"][r], ex["image"] / np.float32(255))
      assert TOK.decode(batch["text"][r]) == ex["captions"][0]
      assert batch["label"][r] == ex["label"]


def test_each_epoch_is_a_fresh_permutation():
  n = 12
  out = take(batches(IndexSource(n), seed=5, num_epochs=3), 9)
  labels = np.concatenate([b["label"] for b in out])
  epochs = labels.reshape(3, n)
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(n))
  with pytest.raises(StopIteration):
    it = iter(batches(IndexSource(n), seed=5, num_epochs=3))
    for _ in range(10):
      next(it)


def test_random_caption_follows_the_documented_rule():
  n, seed = 10, 4
  out = take(batches(IndexSource(n), seed=seed, num_epochs=2, batch_size=5), 4)
  for position, (label, text) in enumerate(
      (l, t) for b in out for l, t in zip(b["label"], b["text"])):
    epoch = position // n
    choice = pipeline.example_rng(seed, epoch, int(label), "caption").integers(len(CAPTIONS))
    assert TOK.decode(text) == CAPTIONS[choice]
  chosen = {TOK.decode(t) for b in out for t in b["text"]}
  assert len(chosen) > 2


def test_caption_choice_is_independent_of_the_image():
  """Same seed for data and pipeline (the configs' default): the choice must not follow
  ShapeWorld's own draws for the example (it once did: default_rng([seed, 0, i]) is both)."""
  source = sw.ShapeWorld(split="train", length=600, seed=0, image_size=16, num_objects=(1, 3))
  counts = np.array([source[i]["num_objects"] for i in range(len(source))])
  choices = np.array([pipeline.example_rng(0, 0, i, "caption").integers(5)
                      for i in range(len(source))])
  assert _chi_square(counts, choices) < 26.1  # 8 degrees of freedom, p = 0.001
  # The unsalted stream (the bug this guards against) fails the same check by far (~866).
  unsalted = np.array([np.random.default_rng([0, 0, i]).integers(5) for i in range(len(source))])
  assert _chi_square(counts, unsalted) > 200


def _chi_square(counts, choices):
  """Pearson's chi-square statistic of the object count x choice contingency table."""
  table = np.array([[np.sum((counts == c) & (choices == k)) for k in range(5)] for c in (1, 2, 3)])
  expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
  return ((table - expected) ** 2 / expected).sum()


def test_deterministic_and_seed_dependent():
  src = IndexSource(50)
  a = take(batches(src, seed=1), 5)
  b = take(batches(src, seed=1), 5)
  c = take(batches(src, seed=2), 5)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["label"], z["label"]) for x, z in zip(a, c))


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_read_slices_of_the_one_host_global_batch(process_count):
  src = IndexSource(30)
  b = 2
  global_batches = take(batches(src, seed=3, batch_size=b * process_count), 8)
  hosts = [take(batches(src, seed=3, batch_size=b, process_index=p,
                        process_count=process_count), 8) for p in range(process_count)]
  for j, whole in enumerate(global_batches):
    for key in whole:
      rows = np.concatenate([hosts[p][j][key] for p in range(process_count)])
      np.testing.assert_array_equal(whole[key], rows)


def test_restore_from_state_resumes_the_same_stream():
  src = sw.ShapeWorld("train", 40, seed=2, image_size=32)
  dataset = batches(src, seed=9, batch_size=3, process_index=1, process_count=2)
  it = iter(dataset)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # What the checkpoint handler writes.
  expected = [next(it) for _ in range(6)]  # Crosses an epoch boundary (40 / 6 per step).
  restored = iter(batches(src, seed=9, batch_size=3, process_index=1, process_count=2))
  restored.set_state(state)
  for x, y in zip(expected, [next(restored) for _ in range(6)]):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_finite_epochs_drop_only_the_last_partial_global_batch():
  out = list(iter(batches(IndexSource(10), batch_size=3, num_epochs=2)))
  assert len(out) == 20 // 3
  out = list(iter(batches(IndexSource(10), batch_size=2, process_count=2, num_epochs=1)))
  assert len(out) == 10 // 4
  with pytest.raises(ValueError, match="no full global batch"):
    batches(IndexSource(3), batch_size=2, process_count=2, num_epochs=1)


@pytest.mark.parametrize("image, pattern", [
    (np.zeros((8, 8), np.uint8), r"example 3: image has shape \[8, 8\], expected \[8, 8, 3\]"),
    (np.zeros((8, 8, 4), np.uint8), r"example 3: image has shape \[8, 8, 4\], expected"),
    (np.zeros((8, 9, 3), np.uint8), r"example 3: image has shape \[8, 9, 3\], expected"),
    (np.zeros((8, 8, 3), np.float32), r"example 3: image has dtype float32, expected uint8"),
])
def test_bad_image_raises_naming_the_example(image, pattern):
  src = IndexSource(8, image=image)
  with pytest.raises(ValueError, match=pattern):
    take(batches(src, shuffle=False, batch_size=4), 1)
  with pytest.raises(ValueError, match=pattern):
    pipeline.eval_arrays(src, TOK, 8, 8)


@pytest.mark.parametrize("captions", [("a red circle", "  "), "", ()])
def test_empty_caption_raises_naming_the_example(captions):
  src = IndexSource(8, captions=captions)
  with pytest.raises(ValueError, match="example 5"):
    take(batches(src, shuffle=False, batch_size=8, caption_choice="first"), 1)
  with pytest.raises(ValueError, match="example 5"):
    pipeline.eval_arrays(src, TOK, 8, 8)


def test_bad_arguments():
  src = IndexSource(8)
  with pytest.raises(ValueError, match="process_index"):
    batches(src, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="caption_choice"):
    batches(src, caption_choice="all")
  with pytest.raises(ValueError, match="empty"):
    batches(IndexSource(0))


def test_eval_arrays_hold_every_caption():
  src = sw.ShapeWorld("test", 10, seed=4, image_size=32)
  out = pipeline.eval_arrays(src, TOK, 24, 6)
  assert out["image"].shape == (6, 32, 32, 3) and out["image"].dtype == np.float32
  assert out["text"].shape == (30, 24) and out["text"].dtype == np.int32
  np.testing.assert_array_equal(out["text_to_image"], np.repeat(np.arange(6), 5))
  assert out["text_to_image"].dtype == np.int32
  for i in range(6):
    ex = src[i]
    np.testing.assert_array_equal(out["image"][i], ex["image"] / np.float32(255))
    assert out["label"][i] == ex["label"]
    for k in range(5):
      assert out["captions"][5 * i + k] == ex["captions"][k]
      assert TOK.decode(out["text"][5 * i + k]) == ex["captions"][k]


def test_grain_checkpoint_handler_round_trip(tmp_path):
  import grain
  from etils import epath
  src = IndexSource(25)
  it = iter(batches(src, seed=2))
  for _ in range(4):
    next(it)
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)
  expected = [next(it) for _ in range(3)]
  restored = iter(batches(src, seed=2))
  grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=restored)
  for x, y in zip(expected, [next(restored) for _ in range(3)]):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["text"], y["text"])


def test_example_batches_use_any_loader_with_the_same_stream_and_state():
  """A task's own loader sees the same (position, index) stream as the image-text batches."""
  src = IndexSource(10)
  seen = lambda position, index: {"position": np.int64(position), "index": np.int32(index)}
  custom = pipeline.example_batches(src, seen, batch_size=4, seed=3, process_index=1,
                                    process_count=2)
  reference = batches(src, seed=3, process_index=1, process_count=2)
  it = iter(custom)
  first = [next(it) for _ in range(3)]
  for j, (mine, theirs) in enumerate(zip(first, take(reference, 3))):
    np.testing.assert_array_equal(mine["index"], theirs["label"])
    # Host 1 of 2 holds stream positions j*8 + 4 .. j*8 + 7 of global batch j.
    np.testing.assert_array_equal(mine["position"], j * 8 + 4 + np.arange(4))
  state = it.get_state()
  after = next(it)
  restored = iter(pipeline.example_batches(src, seen, batch_size=4, seed=3, process_index=1,
                                           process_count=2))
  restored.set_state(state)
  np.testing.assert_array_equal(next(restored)["index"], after["index"])
