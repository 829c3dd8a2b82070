"""`mmjax.data.sources`: the JSONL held-out split (disjoint, covering, seeded, stable), eval_path,
length limits, zero-shot classes from the config, and the errors a user's data section gets."""
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax.data import sources
from mmjax.errors import ConfigError
from mmjax.train.tasks import image_text_eval


def _write_folder(root, count, labels=True):
  (root / "images").mkdir(parents=True)
  with open(root / "data.jsonl", "w") as f:
    for i in range(count):
      Image.fromarray(np.full((6, 9, 3), i, np.uint8)).save(root / "images" / f"{i}.png")
      record = {"image": f"images/{i}.png", "caption": [f"image number {i}", f"picture {i}"]}
      if labels:
        record["label"] = i % 3
      f.write(json.dumps(record) + "\n")
  return root


def _data(root, **overrides):
  return ml_collections.ConfigDict({**dict(name="jsonl", path=str(root), eval_path="",
                                           eval_fraction=0.25, seed=0, image_size=4,
                                           resize="center_crop", context_length=8),
                                    **overrides})


def _ids(source):
  # Every image is filled with its record index: read it back from the pixels.
  return [int(source[i]["image"][0, 0, 0]) for i in range(len(source))]


def test_held_out_split_is_disjoint_covering_and_seeded(tmp_path):
  root = _write_folder(tmp_path / "d", 40)
  data = _data(root)
  train, test = sources.image_text_source(data, "train"), sources.image_text_source(data, "test")
  train_ids, test_ids = _ids(train), _ids(test)
  assert len(test_ids) == 10 and len(train_ids) == 30
  assert sorted(train_ids + test_ids) == list(range(40))
  expected_test = sorted(np.random.default_rng(0).permutation(40)[:10].tolist())
  assert test_ids == expected_test
  assert _ids(sources.image_text_source(_data(root, seed=1), "test")) != expected_test
  # Captions come with their own image, not another record's.
  item = test[0]
  assert item["captions"] == (f"image number {test_ids[0]}", f"picture {test_ids[0]}")
  assert int(item["label"]) == test_ids[0] % 3
  assert sorted(sources.train_captions(data)) == sorted(
      c for i in train_ids for c in (f"image number {i}", f"picture {i}"))


def test_eval_path_and_length_limit(tmp_path):
  train_root = _write_folder(tmp_path / "train", 12)
  eval_root = _write_folder(tmp_path / "eval", 5)
  data = _data(train_root, eval_path=str(eval_root))
  assert _ids(sources.image_text_source(data, "train")) == list(range(12))
  assert _ids(sources.image_text_source(data, "test")) == list(range(5))
  assert _ids(sources.image_text_source(data, "test", 3)) == [0, 1, 2]
  assert len(sources.image_text_source(data, "test", 50)) == 5


@pytest.mark.parametrize("overrides, message", [
    (dict(name="coco"), "data.name must be one of"),
    (dict(path=""), "needs data.path"),
    (dict(eval_fraction=1.0), "eval_fraction must be in"),
])
def test_bad_data_sections(tmp_path, overrides, message):
  root = _write_folder(tmp_path / "d", 4)
  with pytest.raises(ConfigError, match=message):
    sources.image_text_source(_data(root, **overrides), "train")


def test_bpe_is_refused_for_shapeworld():
  data = ml_collections.ConfigDict(dict(name="shapeworld", tokenizer="bpe"))
  with pytest.raises(ConfigError, match="closed word list"):
    sources.task_tokenizer(data)


def _eval_config(root, **eval_overrides):
  return ml_collections.ConfigDict(dict(
      data=_data(root), eval=dict(zero_shot_images=100, batch_size=8, **eval_overrides)))


def test_zero_shot_classes_from_the_config(tmp_path):
  from mmjax.data.shapeworld_text import shapeworld_tokenizer
  root = _write_folder(tmp_path / "d", 40)
  config = _eval_config(root, class_names=("red", "blue", "green"),
                        templates=("a {} shape.", "there is a {}"))
  tokenizer = shapeworld_tokenizer()
  seen = {}

  def embed_text(params, tokens):
    seen["tokens"] = tokens
    return np.ones((len(tokens), 2), np.float32)

  evaluator = image_text_eval.zero_shot_evaluator(config, tokenizer, lambda p, x: x, embed_text)
  expected_prompts = ["a red shape.", "there is a red", "a blue shape.", "there is a blue",
                      "a green shape.", "there is a green"]
  np.testing.assert_array_equal(evaluator.prompt_tokens.reshape(6, -1),
                                tokenizer.encode_batch(expected_prompts, 8))
  test_ids = _ids(sources.image_text_source(config.data, "test"))
  np.testing.assert_array_equal(evaluator.labels, np.asarray(test_ids) % 3)
  # No class names: no zero-shot evaluator for a user's data.
  assert image_text_eval.zero_shot_evaluator(_eval_config(root), tokenizer, None, None) is None


@pytest.mark.parametrize("eval_overrides, message", [
    (dict(class_names=("a", "b")), "label 2, but eval.class_names has only 2"),
    (dict(class_names=("a", "b", "c"), templates=("no slot",)), "exactly one"),
    (dict(class_names=("a", ""),), "non-empty str"),
])
def test_zero_shot_class_errors(tmp_path, eval_overrides, message):
  from mmjax.data.shapeworld_text import shapeworld_tokenizer
  root = _write_folder(tmp_path / "d", 40)
  with pytest.raises(ConfigError, match=message):
    image_text_eval.zero_shot_evaluator(_eval_config(root, **eval_overrides),
                                        shapeworld_tokenizer(), None, None)


def test_zero_shot_needs_labelled_records(tmp_path):
  from mmjax.data.shapeworld_text import shapeworld_tokenizer
  root = _write_folder(tmp_path / "d", 8, labels=False)
  with pytest.raises(ConfigError, match="no test record .* has a 'label'"):
    image_text_eval.zero_shot_evaluator(_eval_config(root, class_names=("a",)),
                                        shapeworld_tokenizer(), None, None)
