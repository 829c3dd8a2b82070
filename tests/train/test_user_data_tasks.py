"""Tasks on a user's JSONL folder selected by config (data.name=jsonl): training reads only the
train split, evaluation only the held-out one, a BPE trained on the train captions tokenises, and
zero-shot runs over eval.class_names; a missing image stops `mmjax train` naming the file."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import cli
from mmjax.data import sources
from mmjax.train.tasks import get_task_class
from mmjax.train.trainer import train

COLOURS = ((230, 30, 30), (30, 200, 30), (30, 30, 230))
NAMES = ("red", "green", "blue")


def write_folder(root, count):
  """Example i: a 16 px image whose green channel is i (its id) and whose red/blue say its
  class i % 3; captions name the class."""
  (root / "images").mkdir(parents=True)
  with open(root / "data.jsonl", "w") as f:
    for i in range(count):
      pixels = np.zeros((16, 16, 3), np.uint8)
      pixels[..., 0], pixels[..., 2] = COLOURS[i % 3][0], COLOURS[i % 3][2]
      pixels[..., 1] = i
      Image.fromarray(pixels).save(root / "images" / f"{i}.png")
      f.write(json.dumps({"image": f"images/{i}.png", "label": i % 3,
                          "caption": [f"a {NAMES[i % 3]} picture", f"something {NAMES[i % 3]}"]})
              + "\n")
  return root


def user_data_overrides(root):
  return [f"data.name=jsonl", f"data.path={root}", "data.eval_fraction=0.25",
          "data.tokenizer=bpe", "data.vocab_size=300",
          "eval.class_names=('red','green','blue')", "eval.templates=('a {} picture',)",
          "eval.zero_shot_images=100", "eval.retrieval_images=100"]


def test_contrastive_on_a_jsonl_folder(tmp_path, tiny):
  root = write_folder(tmp_path / "data", 48)
  config = tiny(*user_data_overrides(root), "total_steps=2")
  held_out = {int(round(float(sources.image_text_source(config.data, "test")[i]["image"][0, 0, 1])))
              for i in range(12)}
  task = get_task_class(config.task)(config)
  assert task.tokenizer.vocab_size <= 300  # a tiny corpus has fewer merges to learn
  assert task.tokenizer.decode(task.tokenizer.encode("a green picture")) == "a green picture"
  # Training batches hold train-split images only (green channel = record id).
  batches = task.train_batches(0, 1)
  seen = set()
  for _ in range(6):  # 96 rows: two epochs of the 36 train records
    batch = next(batches)
    seen |= set(np.round(batch["image"][:, 0, 0, 1] * 255).astype(int).tolist())
  assert seen == set(range(48)) - held_out
  evaluators = task.evaluators()
  zero_shot = evaluators["zero_shot"]
  ids = np.round(zero_shot.images[:, 0, 0, 1] * 255).astype(int)
  assert set(ids.tolist()) == held_out
  np.testing.assert_array_equal(zero_shot.labels, ids % 3)
  assert len(evaluators["retrieval"].images) == 12
  result = train(config, tmp_path / "run", devices=jax.devices()[:1], progress=False)
  assert {"zeroshot_top1", "i2t_r@1", "t2i_r@1"} <= set(result.eval_metrics)


def test_captioning_on_a_jsonl_folder_reports_text_metrics(tmp_path):
  from test_caption_task import tiny_config
  root = write_folder(tmp_path / "data", 24)
  config = tiny_config(f"data.name=jsonl", f"data.path={root}", "data.eval_fraction=0.25",
                       "data.tokenizer=bpe", "data.vocab_size=300", "total_steps=2",
                       "eval.num_images=100")
  result = train(config, tmp_path / "run", devices=jax.devices()[:1], progress=False)
  # BLEU / CIDEr on the 6 held-out images; ShapeWorld's attribute accuracies need its labels.
  assert {"eval_loss", "bleu4", "cider_d"} <= set(result.eval_metrics)
  assert not any(key.endswith("_accuracy") for key in result.eval_metrics)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_missing_image_stops_train_naming_the_file(split, tmp_path, capsys, monkeypatch):
  from runs import train_args
  monkeypatch.delenv("MMJAX_DEBUG", raising=False)
  root = write_folder(tmp_path / "data", 24)
  overrides = user_data_overrides(root)
  data = sources.image_text_source(
      cli_config(overrides).data, split)
  missing = data.source.records[int(data.indices[0])][0]
  missing.unlink()
  code = cli.main(train_args(tmp_path / "run", *overrides, "total_steps=2"))
  err = capsys.readouterr().err
  assert code == 2, err
  assert f"cannot read image {missing}" in err, err


def cli_config(overrides):
  from conftest import tiny_config
  return tiny_config(*overrides)
