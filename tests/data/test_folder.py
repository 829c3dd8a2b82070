"""ImageTextFolder (JSONL + images) and TfdsImageText: items, resizing, errors, pipeline.

TfdsImageText is checked against tests/fixtures/tfds (made by its make_fixture.py with
tensorflow-datasets): always on the records `tfds.data_source` served, through a stand-in
module, and with the real tfds on the prepared data when it is installed.
"""
import json
import pathlib
import sys
import types

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


TFDS_FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "tfds"


def tfds_expected():
  """(data set name, [{captions, label, example}] per served index) from make_fixture.py."""
  expected = json.loads((TFDS_FIXTURE / "expected.json").read_text(encoding="utf-8"))
  return expected["name"], expected["records"]


def fixture_image(example):
  """The generator's uint8 [8, 12, 3] image of `example` (make_fixture.example_image)."""
  rows, cols = np.mgrid[:8, :12]
  return np.stack([cols * 20, rows * 30, np.full_like(rows, 50 * example)], -1).astype(np.uint8)


def served_records():
  """The fixture's examples rebuilt as `tfds.data_source(...)[i]` served them."""
  served = np.load(TFDS_FIXTURE / "served_records.npz")
  served_types = json.loads(str(served["types"]))
  _, expected = tfds_expected()
  records = []
  for i, kinds in enumerate(served_types):
    # The npz holds values; served_types says which Python types tfds served them as.
    texts = [bytes(text) for text in served[f"captions_text_{i}"]]
    if kinds["captions_text"].startswith("ndarray"):
      texts = np.array(texts, dtype=object)
    label = served[f"label_{i}"][()]
    label = int(label) if kinds["label"] == "int" else label
    record = {"image": served[f"image_{i}"], "captions": {"text": texts}, "label": label,
              "id": expected[i]["example"]}
    assert sorted(record) == kinds["keys"]
    assert f"{type(texts).__name__} of {type(texts[0]).__name__}" == kinds["captions_text"]
    assert type(label).__name__ == kinds["label"] and str(record["image"].dtype) == kinds["image"]
    records.append(record)
  return records


def tfds_source(**kwargs):
  from mmjax.data.folder import TfdsImageText
  name, _ = tfds_expected()
  return TfdsImageText(name, "train", lambda f: f["captions"]["text"],
                       label_fn=lambda f: f["label"], image_size=8,
                       data_dir=str(TFDS_FIXTURE / "data"), **kwargs)


def assert_tfds_items(ds):
  _, expected = tfds_expected()
  assert len(ds) == len(expected)
  for i, want in enumerate(expected):
    item = ds[i]
    assert item["captions"] == tuple(want["captions"]) and item["label"] == want["label"]
    # Centre crop of the 8 x 12 image to 8 x 8: the same scale, columns 2..9.
    np.testing.assert_array_equal(item["image"], fixture_image(want["example"])[:, 2:10])


def test_tfds_source_reads_what_tfds_serves(monkeypatch):
  calls = []

  def data_source(name, *, split, data_dir=None):
    calls.append((name, split, data_dir))
    return served_records()

  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      types.SimpleNamespace(data_source=data_source))
  ds = tfds_source()
  assert calls == [(tfds_expected()[0], "train", str(TFDS_FIXTURE / "data"))]
  assert_tfds_items(ds)
  with pytest.raises(ValueError, match="no image feature 'picture'"):
    tfds_source(image_key="picture")[0]
  records = served_records()
  records[1]["captions"]["text"] = [b"  "]
  monkeypatch.setattr(ds, "source", records)
  with pytest.raises(ValueError, match="example 1: caption 0 is empty"):
    ds[1]


def test_tfds_source_without_tfds_names_the_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError, match="tensorflow-datasets"):
    tfds_source()


def test_tfds_source_reads_the_prepared_fixture_with_real_tfds():
  pytest.importorskip("tensorflow_datasets")  # optional: mmjax[data]
  assert_tfds_items(tfds_source())


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_wide_greyscale_images_are_scaled_not_clipped(tmp_path, mode):
  from PIL import Image
  from mmjax.data.folder import to_square_rgb
  levels = np.array([[0, 16384], [32768, 65535]], np.float64)  # 16-bit levels
  if mode == "F":
    image = Image.fromarray((levels / 65535).astype(np.float32), mode="F")
  elif mode == "I":
    image = Image.fromarray(levels.astype(np.int32), mode="I")
  else:
    image = Image.fromarray(levels.astype(np.uint16))
    path = tmp_path / "deep.png"
    image.save(path)  # a 16-bit PNG on disk, read back as a user's file would be
    image = Image.open(path)
  assert image.mode == mode
  got = to_square_rgb(image, 2, resize="stretch")
  expected = np.round(levels / 65535 * 255).astype(np.uint8)
  np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, axis=-1))


def test_tfds_from_a_data_config_section(monkeypatch):
  """data.name=tfds: the TFDS name, the split per task split, and the nested caption and label
  features named in data.tfds reach `tfds.data_source` and the items."""
  import ml_collections
  from mmjax.data import sources
  calls = []

  def data_source(name, *, split, data_dir=None):
    calls.append((name, split, data_dir))
    return served_records()

  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      types.SimpleNamespace(data_source=data_source))
  name, _ = tfds_expected()
  data = ml_collections.ConfigDict(dict(
      name="tfds", path=name, image_size=8, resize="center_crop", seed=0,
      tfds=dict(train_split="train[:90%]", eval_split="train[90%:]", image_feature="image",
                caption_feature="captions/text", label_feature="label",
                data_dir=str(TFDS_FIXTURE / "data"))))
  assert_tfds_items(sources.image_text_source(data, "train"))
  sources.image_text_source(data, "test", 1)
  assert calls == [(name, "train[:90%]", str(TFDS_FIXTURE / "data")),
                   (name, "train[90%:]", str(TFDS_FIXTURE / "data"))]
  data.tfds.caption_feature = "captions/words"
  with pytest.raises(ValueError, match="no feature 'captions/words'"):
    sources.image_text_source(data, "train")[0]
