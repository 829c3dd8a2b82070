"""ImageTextFolder (JSONL + images): items, resizing, errors, and the pipeline reading it."""
import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data import pipeline
from mmjax.data.folder import ImageTextFolder, to_square_rgb
from mmjax.data.tokenizer import WordTokenizer


def write_jsonl(folder, records):
  path = folder / "data.jsonl"
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
  return path


@pytest.fixture
def folder(tmp_path):
  (tmp_path / "img").mkdir()
  stripes = np.zeros((32, 64, 3), np.uint8)  # Red | green | blue columns, 16 | 32 | 16 wide.
  stripes[:, :16, 0] = stripes[:, 16:48, 1] = stripes[:, 48:, 2] = 255
  Image.fromarray(stripes).save(tmp_path / "img" / "stripes.png")
  Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "img" / "grey.png")
  Image.fromarray(np.full((10, 30, 4), 200, np.uint8)).save(tmp_path / "img" / "rgba.png")
  write_jsonl(tmp_path, [
      {"image": "img/stripes.png", "caption": "green in the middle"},
      {"image": "img/grey.png", "caption": ["a grey square", "grey"], "label": 4},
      "",
      {"image": "img/rgba.png", "caption": ["white"]},
  ])
  return tmp_path


def test_items(folder):
  ds = ImageTextFolder(folder, image_size=16)
  assert len(ds) == 3
  ex = ds[0]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (16, 16, 3)
  assert ex["captions"] == ("green in the middle",) and ex["label"] == -1
  # Centre crop keeps only the green middle band of the 2:1 image.
  assert (ex["image"][:, :, 1] > 200).mean() > 0.9 and ex["image"][:, :, 0].max() < 60
  assert ds[1]["captions"] == ("a grey square", "grey") and ds[1]["label"] == 4
  np.testing.assert_array_equal(ds[1]["image"], np.full((16, 16, 3), 128, np.uint8))
  assert ds[2]["image"].shape == (16, 16, 3)
  stretched = ImageTextFolder(folder / "data.jsonl", image_size=16, resize="stretch")[0]
  assert stretched["image"][8, 0, 0] > 200 and stretched["image"][8, 15, 2] > 200


def test_to_square_rgb_matches_pil_stretch():
  array = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
  expected = np.asarray(Image.fromarray(array).resize((8, 8), Image.BICUBIC))
  np.testing.assert_array_equal(to_square_rgb(array, 8, "stretch"), expected)


@pytest.mark.parametrize("line, pattern", [
    ("{not json", r"data.jsonl:2: invalid JSON"),
    (json.dumps({"image": "a.png"}), r"data.jsonl:2: expected an object with keys"),
    (json.dumps({"image": "a.png", "caption": "  "}), r"data.jsonl:2: caption 0 is empty"),
    (json.dumps({"image": "a.png", "caption": []}), r"data.jsonl:2: 'caption' must be"),
    (json.dumps({"image": "a.png", "caption": "x", "label": "cat"}), r"'label' must be an int"),
])
def test_bad_records_fail_at_construction(tmp_path, line, pattern):
  write_jsonl(tmp_path, [{"image": "a.png", "caption": "fine"}, line])
  with pytest.raises(ValueError, match=pattern):
    ImageTextFolder(tmp_path)


def test_unreadable_images_fail_naming_the_example(tmp_path):
  (tmp_path / "broken.png").write_bytes(b"not an image")
  write_jsonl(tmp_path, [{"image": "missing.png", "caption": "a"},
                         {"image": "broken.png", "caption": "b"}])
  ds = ImageTextFolder(tmp_path)
  with pytest.raises(ValueError, match=r"example 0: cannot read image .*missing.png"):
    ds[0]
  with pytest.raises(ValueError, match=r"example 1: cannot read image .*broken.png"):
    ds[1]
  with pytest.raises(ValueError, match="is not a file"):
    ImageTextFolder(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="exactly one .jsonl"):
    ImageTextFolder(tmp_path / "empty")


def test_pipeline_reads_the_folder(folder):
  ds = ImageTextFolder(folder, image_size=16)
  tok = WordTokenizer("green in the middle a grey square white".split())
  batch = next(iter(pipeline.image_text_batches(ds, tok, batch_size=3, context_length=6, seed=0,
                                                shuffle=False, caption_choice="first")))
  assert batch["image"].shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(batch["label"], [-1, 4, -1])
  assert tok.decode(batch["text"][1]) == "a grey square"
  out = pipeline.eval_arrays(ds, tok, 6, 3)
  np.testing.assert_array_equal(out["text_to_image"], [0, 1, 1, 2])
  assert out["captions"] == ["green in the middle", "a grey square", "grey", "white"]


def test_tfds_source_is_optional():
  tfds = pytest.importorskip("tensorflow_datasets")
  from mmjax.data.folder import TfdsImageText
  assert tfds is not None and TfdsImageText is not None
