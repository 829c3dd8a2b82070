"""SentencePieceTokenizer: ids against sentencepiece's own EncodeAsIds/DecodeIds, rows against a
hand-built layout, on two tiny models trained here (T5/SigLIP-style ids and sentencepiece's
defaults)."""
import numpy as np
import pytest
import sentencepiece

from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from mmjax.data.tokenizer import Tokenizer

TEXTS = ["A small red circle left of a large blue star.", "two shapes", "zq!",
         "there is a green triangle above a white cross and a cyan diamond below it"]


def _sentences(count=300):
  rng = np.random.default_rng(0)
  colours = "red green blue yellow magenta cyan orange white".split()
  shapes = "circle square triangle star cross diamond".split()
  return [f"{rng.choice(['A', 'there is a', 'an image of a'])} {rng.choice(['small', 'large'])} "
          f"{rng.choice(colours)} {rng.choice(shapes)} {rng.choice(['left of', 'above'])} a "
          f"{rng.choice(colours)} {rng.choice(shapes)}." for _ in range(count)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """{"t5": pad=0 eos=1 unk=2, no bos (T5/SigLIP layout); "default": unk=0 bos=1 eos=2, no pad}."""
  folder = tmp_path_factory.mktemp("spm")
  ids = {"t5": dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1), "default": {}}
  paths = {}
  for name, special_ids in ids.items():
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences()), model_prefix=str(folder / name), vocab_size=64,
        hard_vocab_limit=False, minloglevel=2, num_threads=1, **special_ids)
    paths[name] = folder / f"{name}.model"
  return paths


def _reference(path):
  return sentencepiece.SentencePieceProcessor(model_file=str(path))


def test_special_ids_are_the_models(models):
  t5 = SentencePieceTokenizer(models["t5"])
  assert isinstance(t5, Tokenizer)
  assert (t5.pad_id, t5.eos_id, t5.unk_id, t5.bos_id) == (0, 1, 2, -1)
  default = SentencePieceTokenizer(models["default"], add_bos=True)
  # No pad piece: padding uses unk (0 in sentencepiece's default layout).
  assert (default.unk_id, default.bos_id, default.eos_id, default.pad_id) == (0, 1, 2, 0)
  assert SentencePieceTokenizer(models["default"], pad_id=2).pad_id == 2
  assert t5.vocab_size == _reference(models["t5"]).GetPieceSize()


def test_ids_match_sentencepiece(models):
  for name, path in models.items():
    tok, ref = SentencePieceTokenizer(path), _reference(path)
    for text in TEXTS:
      assert tok.encode(text) == ref.EncodeAsIds(text), (name, text)


def test_encode_batch_layout_is_the_hand_built_one(models):
  ref = _reference(models["default"])
  ids = [ref.EncodeAsIds(text) for text in TEXTS]
  assert max(map(len, ids)) > 10 > min(map(len, ids))  # some rows are cut, some padded
  length = 10
  layouts = {  # (add_bos, add_eos) -> row for token list t: bos/eos from the default model
      (False, True): lambda t: t[:9] + [2],
      (True, True): lambda t: [1] + t[:8] + [2],
      (True, False): lambda t: [1] + t[:9],
      (False, False): lambda t: t[:10],
  }
  for (add_bos, add_eos), layout in layouts.items():
    tok = SentencePieceTokenizer(models["default"], add_bos=add_bos, add_eos=add_eos, pad_id=3)
    rows = tok.encode_batch(TEXTS, length)
    assert rows.dtype == np.int32 and rows.shape == (len(TEXTS), length)
    expected = [layout(t) + [3] * (length - len(layout(t))) for t in ids]
    np.testing.assert_array_equal(rows, expected, err_msg=f"add_bos={add_bos} add_eos={add_eos}")


def test_t5_layout_pads_with_its_pad_piece(models):
  ref = _reference(models["t5"])
  row = SentencePieceTokenizer(models["t5"]).encode_batch(["two shapes"], 12)[0]
  ids = ref.EncodeAsIds("two shapes")
  np.testing.assert_array_equal(row, ids + [1] + [0] * (11 - len(ids)))


def test_decode_matches_sentencepiece_and_stops_at_eos(models):
  tok, ref = SentencePieceTokenizer(models["t5"]), _reference(models["t5"])
  for text, row in zip(TEXTS, tok.encode_batch(TEXTS, 64)):
    assert tok.decode(row) == ref.DecodeIds(ref.EncodeAsIds(text))
  red = ref.EncodeAsIds("red")
  assert tok.decode([0, *red, 0, 1, *red]) == "red"  # pad skipped, stop at eos
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([tok.vocab_size])


def test_bad_input_raises(models, tmp_path):
  tok = SentencePieceTokenizer(models["t5"])
  with pytest.raises(ValueError, match="empty"):
    tok.encode("  ")
  with pytest.raises(ValueError, match="text 1"):
    tok.encode_batch(["a", "\n"], 8)
  with pytest.raises(ValueError, match="context_length"):
    tok.encode_batch(["a"], 0)
  with pytest.raises(ValueError, match="defines no bos"):
    SentencePieceTokenizer(models["t5"], add_bos=True)
  not_a_model = tmp_path / "vocab.model"
  not_a_model.write_text("a\nb\nc\n")
  with pytest.raises(ValueError, match=r"vocab\.model is not a SentencePiece model"):
    SentencePieceTokenizer(not_a_model)
  with pytest.raises(ValueError, match="does not exist"):
    SentencePieceTokenizer(tmp_path / "missing.model")
