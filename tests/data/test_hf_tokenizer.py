"""HFTokenizer / train_bpe: ids against the `tokenizers` library itself, a saved-and-reloaded
tokenizer, the packed layout built by hand, a hand-made WordLevel tokenizer.json with other
special names, and the errors for bad files and arguments."""
import json

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from mmjax.data.hf_tokenizer import HFTokenizer, train_bpe
from mmjax.data.tokenizer import Tokenizer


def _captions(count=400):
  rng = np.random.default_rng(1)
  colours = "red green blue yellow magenta cyan orange white".split()
  shapes = "circle square triangle star cross diamond".split()
  return [f"{rng.choice(['A', 'There is a', 'AN IMAGE OF A'])}  {rng.choice(colours)} "
          f"{rng.choice(shapes)}\t{rng.choice(['left of', 'above', 'below'])} a "
          f"{rng.choice(colours)} {rng.choice(shapes)}." for _ in range(count)]


@pytest.fixture(scope="module")
def trained():
  return train_bpe(_captions(), 400)


def test_train_bpe_ids_normalisation_and_merges(trained):
  assert isinstance(trained, Tokenizer)
  assert (trained.pad_id, trained.bos_id, trained.eos_id, trained.unk_id) == (0, 1, 2, 3)
  assert 4 + 256 < trained.vocab_size <= 400
  # Lower-cased and whitespace-collapsed before BPE.
  assert trained.encode("A  RED\tCircle.") == trained.encode("a red circle.")
  # Frequent caption words were merged into single tokens.
  assert all(len(trained.encode(word)) == 1 for word in ("circle", "triangle", "magenta"))
  # Byte-level: unseen characters still encode, never to unk.
  assert trained.unk_id not in trained.encode("Zürich 🐶 東京")


def test_save_reload_gives_the_same_ids_as_the_library(trained, tmp_path):
  path = tmp_path / "tokenizer.json"
  trained.save(path)
  reloaded = HFTokenizer(path)
  library = tokenizers.Tokenizer.from_file(str(path))
  texts = _captions(20) + ["Zürich 🐶 東京", "zq!"]
  for text in texts:
    assert reloaded.encode(text) == library.encode(text, add_special_tokens=False).ids
    assert trained.encode(text) == reloaded.encode(text)
  np.testing.assert_array_equal(reloaded.encode_batch(texts, 16), trained.encode_batch(texts, 16))


def test_encode_batch_layout_is_the_hand_built_one(trained):
  texts = ["a red circle.", "there is a green triangle below a white cross.", "star"]
  length = 7
  rows = trained.encode_batch(texts, length)
  assert rows.dtype == np.int32 and rows.shape == (3, length)
  for text, row in zip(texts, rows):
    ids = trained.encode(text)[:length - 2]
    expected = [1] + ids + [2] + [0] * (length - 2 - len(ids))
    np.testing.assert_array_equal(row, expected)
  assert len(trained.encode(texts[1])) > length - 2  # one row was truncated, eos kept


def test_decode_round_trip_and_stop_at_eos(trained):
  row = trained.encode_batch(["A  Red circle. Zürich 🐶"], 32)[0]
  assert trained.decode(row) == "a red circle. zürich 🐶"
  red = trained.encode("red")
  assert trained.decode([1, *red, 0, 2, *red]) == "red"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    trained.decode([trained.vocab_size])


def _word_level_json(tmp_path):
  vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "red": 5, "circle": 6}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  # A post-processor and padding in the file must not leak into the mmjax layout.
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.enable_padding(pad_id=0, pad_token="[PAD]", length=12)
  path = tmp_path / "word_level.json"
  tok.save(str(path))
  return path


def test_other_tokenizer_json_with_named_specials(tmp_path):
  path = _word_level_json(tmp_path)
  tok = HFTokenizer(path, pad_token="[PAD]", bos_token="[CLS]", eos_token="[SEP]",
                    unk_token="[UNK]")
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (0, 2, 3, 1, 7)
  assert tok.encode("a red dog") == [4, 5, 1]
  np.testing.assert_array_equal(tok.encode_batch(["a red circle", "red"], 4),
                                [[2, 4, 5, 3], [2, 5, 3, 0]])
  with pytest.raises(ValueError, match=r"word_level\.json has no token '<pad>' for pad"):
    HFTokenizer(path)


def test_bad_files_and_arguments_raise(tmp_path, trained):
  not_json = tmp_path / "captions.txt"
  not_json.write_text("a red circle\n")
  with pytest.raises(ValueError, match=r"captions\.txt is not a Hugging Face tokenizers"):
    HFTokenizer(not_json)
  other_json = tmp_path / "config.json"
  other_json.write_text(json.dumps({"model": "clip", "width": 512}))
  with pytest.raises(ValueError, match=r"config\.json is not a Hugging Face tokenizers"):
    HFTokenizer(other_json)
  with pytest.raises(ValueError, match="does not exist"):
    HFTokenizer(tmp_path / "missing.json")
  with pytest.raises(ValueError, match="vocab_size"):
    train_bpe(_captions(10), 100)
  with pytest.raises(ValueError, match="empty"):
    train_bpe([], 300)
  with pytest.raises(ValueError, match="training text 1"):
    train_bpe(["a red circle", "  "], 300)
  with pytest.raises(ValueError, match="text 0"):
    trained.encode_batch([""], 8)
  with pytest.raises(ValueError, match="context_length"):
    trained.encode_batch(["a"], 1)
