"""`on_bad_example`: a bad example stops the pipeline, or is replaced by the next good index
and counted, until more than `max_bad_fraction` of the examples were bad."""
import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data import pipeline
from mmjax.data.folder import ImageTextFolder
from mmjax.data.tokenizer import WordTokenizer
from mmjax.errors import DataError

WORDS = "a red green blue square".split()
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def image_folder(tmp_path, count, bad):
  """A JSONL folder of `count` 8 px single-colour PNGs, example i captioned with its colour;
  the indices in `bad` are files of garbage bytes (a truncated download, say)."""
  records = []
  for i in range(count):
    name, colour = list(COLOURS.items())[i % 3]
    path = tmp_path / f"{i}.png"
    if i in bad:
      path.write_bytes(b"\x89PNG garbage")
    else:
      Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(path)
    records.append({"image": path.name, "caption": f"a {name} square", "label": i})
  (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  return ImageTextFolder(tmp_path, image_size=8)


def _batches(source, **options):
  return pipeline.batch_iterator(pipeline.image_text_batches(
      source, WordTokenizer(WORDS), batch_size=4, context_length=5, seed=0, shuffle=False,
      caption_choice="first", num_threads=1, **options))


def test_by_default_a_bad_image_stops_the_pipeline_naming_it(tmp_path):
  batches = _batches(image_folder(tmp_path, 12, bad={5}))
  assert batches.bad_examples is None
  next(batches)
  with pytest.raises(ValueError, match=r"example 5: cannot read image .*5\.png"):
    next(batches)


def test_skip_replaces_a_bad_example_by_the_next_good_index_and_counts_it(tmp_path, capsys):
  source = image_folder(tmp_path, 12, bad={5, 6})
  batches = _batches(source, on_bad_example="skip", max_bad_fraction=0.5)
  labels = np.concatenate([next(batches)["label"] for _ in range(3)])
  # Positions 5 and 6 both read index 7, the next good one; the rest read their own index.
  np.testing.assert_array_equal(labels, [0, 1, 2, 3, 4, 7, 7, 7, 8, 9, 10, 11])
  counts = batches.bad_examples.counts()
  # Position 5 tries 5 and 6 before 7; position 6 tries 6: three skips (prefetch may add the
  # next epoch's, which start with the same indices).
  assert counts["data_bad_examples"] >= 3 and counts["data_examples_loaded"] >= 15
  err = capsys.readouterr().err
  assert "mmjax: warning: skipping a bad example (example 5: cannot read image" in err
  # The substitutes are the good examples themselves.
  image = next(_batches(source, on_bad_example="skip", max_bad_fraction=0.5))["image"]
  np.testing.assert_array_equal(image[1], source[1]["image"] / np.float32(255))


def test_more_bad_examples_than_allowed_stop_the_run(tmp_path):
  source = image_folder(tmp_path, 12, bad={1, 2, 3})
  batches = _batches(source, on_bad_example="skip", max_bad_fraction=0.02)
  with pytest.raises(DataError, match=r"3 of \d+ examples loaded were bad, more than "
                                      r"data.max_bad_fraction=0.02; the last: example 3"):
    for _ in range(3):
      next(batches)


def test_bad_settings_are_errors(tmp_path):
  source = image_folder(tmp_path, 4, bad=set())
  with pytest.raises(ValueError, match=r"on_bad_example \(data.on_bad_example\) must be one "
                                       r"of \('error', 'skip'\), got 'ignore'"):
    _batches(source, on_bad_example="ignore")
  with pytest.raises(ValueError, match=r"max_bad_fraction must be in \[0, 1\), got 1.5"):
    _batches(source, on_bad_example="skip", max_bad_fraction=1.5)
