"""ClipTokenizer against open_clip: ids, packed rows and decodes recorded from open_clip 3.3.0 by
tests/fixtures/tokenizers/make_clip_tokenizer_fixture.py (no torch needed here)."""
import gzip
import hashlib
import html
import json
import pathlib

import ftfy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmjax.data.clip_tokenizer import DEFAULT_MERGES_PATH, ClipTokenizer, clean_text, read_merges_gz
from mmjax.data.tokenizer import Tokenizer

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "tokenizers" / "clip_open_clip_ids.json"
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def expected():
  return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def tok():
  return ClipTokenizer()


def test_packaged_vocab_and_special_ids_are_open_clips(expected, tok):
  assert hashlib.sha256(DEFAULT_MERGES_PATH.read_bytes()).hexdigest() == expected["merges_sha256"]
  assert isinstance(tok, Tokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (
      expected["vocab_size"], expected["sot_id"], expected["eot_id"]) == (49408, SOT, EOT)
  assert (tok.pad_id, tok.unk_id) == (0, EOT)


def test_encode_matches_open_clip(expected, tok):
  wrong = [(c["text"], tok.encode(c["text"]), c["ids"]) for c in expected["cases"]
           if tok.encode(c["text"]) != c["ids"]]
  assert not wrong


def test_encode_batch_matches_open_clip_tokenize(expected, tok):
  texts = [c["text"] for c in expected["cases"]]
  for length in expected["context_lengths"]:
    rows = tok.encode_batch(texts, length)
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, [c["rows"][str(length)] for c in expected["cases"]])
  # The corpus really exercises truncation at 77 (eot kept last) and cleaning to nothing.
  long_rows = [c["rows"]["77"] for c in expected["cases"] if len(c["ids"]) > 75]
  assert len(long_rows) >= 3 and all(row[-1] == EOT for row in long_rows)


def test_text_that_cleans_to_nothing_gives_sot_eot(expected, tok):
  empty = [c["text"] for c in expected["cases"] if not c["ids"]]
  assert len(empty) >= 4  # "&nbsp;", control characters, BOM, terminal escapes
  for text in empty:
    assert tok.encode(text) == []
    np.testing.assert_array_equal(tok.encode_batch([text], 6)[0], [SOT, EOT, 0, 0, 0, 0])


@pytest.mark.parametrize("bad", ["", "   ", "\n\t ", "\u3000"])
def test_empty_or_whitespace_input_raises(tok, bad):
  with pytest.raises(ValueError, match="empty"):
    tok.encode(bad)
  with pytest.raises(ValueError, match="text 1"):
    tok.encode_batch(["a cat", bad], 8)


def test_bad_arguments_raise(tok):
  with pytest.raises(ValueError, match="context_length"):
    tok.encode_batch(["a cat"], 1)
  with pytest.raises(ValueError, match="single str"):
    tok.encode_batch("a cat", 8)
  with pytest.raises(ValueError, match="outside the CLIP vocabulary"):
    tok.decode([320, 49408])
  with pytest.raises(ValueError, match="integer"):
    tok.decode(np.array([1.5]))


def test_decode_matches_open_clip(expected, tok):
  for case in expected["cases"]:
    if SOT in case["ids"] or EOT in case["ids"]:
      continue  # literal "<start_of_text>" in the text: decode skips sot / stops at eot
    assert tok.decode(case["ids"]) == case["decoded"].rstrip(" "), case["text"]
    # A packed row decodes to the same text: sot skipped, stop at eot, padding never reached.
    row = case["rows"]["77"]
    if len(case["ids"]) <= 75:
      assert tok.decode(np.array(row)) == case["decoded"].rstrip(" ")
  # Cuts inside multi-byte characters: U+FFFD exactly where open_clip puts it.
  for cut in expected["partial_decodes"]:
    assert tok.decode(cut["ids"]) == cut["decoded"].rstrip(" "), cut["ids"]
  assert any("\ufffd" in cut["decoded"] for cut in expected["partial_decodes"])


def test_zero_inside_a_text_is_a_token_trailing_zeros_are_padding(tok):
  # open_clip: encode("!@#") == [0, 39397] ("!" then "@#</w>"); encode("a") == [320].
  assert tok.encode("!@#") == [0, 39397]
  assert tok.decode([SOT, 0, 39397, EOT, 0, 0]) == "!@#"
  assert tok.decode([SOT, 320, 0, 0]) == "a"
  assert tok.decode([320, EOT, 320]) == "a"


_UNTOUCHED = "\t\n" + "".join(chr(c) for c in range(0x20, 0x7f) if chr(c) != "&")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet=_UNTOUCHED, max_size=40),
                 st.text(alphabet=_UNTOUCHED + "&;#\r\x1b\x00\x7f\xa0\u2019\ufeff", max_size=40)))
def test_clean_text_is_open_clips_cleaning(text):
  # open_clip's basic_clean + whitespace_clean + lower, spelled out; clean_text skips ftfy for
  # the text it leaves unchanged, which must not change the result.
  reference = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
  assert clean_text(text) == reference


def test_hugging_face_layout_gives_the_same_ids(tmp_path, expected, tok):
  merges = read_merges_gz(DEFAULT_MERGES_PATH)
  vocab = dict(tok._bpe.get_vocab(with_added_tokens=True))
  vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
  vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "merges.txt").write_text(
      "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
  hf = ClipTokenizer.from_hf(tmp_path / "vocab.json", tmp_path / "merges.txt")
  assert (hf.vocab_size, hf.bos_id, hf.eos_id, hf.pad_id) == (49408, SOT, EOT, 0)
  cases = [c for c in expected["cases"] if "_of_text>" not in c["text"]]
  np.testing.assert_array_equal(hf.encode_batch([c["text"] for c in cases], 77),
                                [c["rows"]["77"] for c in cases])


def test_files_that_are_not_clip_vocabularies_raise(tmp_path):
  text_file = tmp_path / "notes.txt.gz"
  text_file.write_text("just some text\n")
  with pytest.raises(ValueError, match=r"notes\.txt\.gz is not a gzip-compressed"):
    ClipTokenizer(text_file)
  three_columns = tmp_path / "three.txt.gz"
  three_columns.write_bytes(gzip.compress(b"header\na b c\n"))
  with pytest.raises(ValueError, match=r"three\.txt\.gz.*line 2.*two space-separated"):
    ClipTokenizer(three_columns)
  unknown_symbols = tmp_path / "words.txt.gz"
  unknown_symbols.write_bytes(gzip.compress(b"header\nhello world\n"))
  with pytest.raises(ValueError, match=r"words\.txt\.gz.*merge 0.*not in the vocabulary"):
    ClipTokenizer(unknown_symbols)
  with pytest.raises(ValueError, match="does not exist"):
    ClipTokenizer(tmp_path / "missing.txt.gz")
  (tmp_path / "vocab.json").write_text("[1, 2]")
  (tmp_path / "merges.txt").write_text("#version: 0.2\ni n\n")
  with pytest.raises(ValueError, match=r"vocab\.json is not a CLIP vocab\.json"):
    ClipTokenizer.from_hf(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_piece_cache_overflow_keeps_ids_exact(expected, monkeypatch):
  # A tiny cache is replaced over and over along the corpus; ids must not depend on it.
  monkeypatch.setattr("mmjax.data.clip_tokenizer._PIECE_CACHE_SIZE", 7)
  small = ClipTokenizer()
  for _ in range(2):
    for case in expected["cases"]:
      np.testing.assert_array_equal(small.encode_batch([case["text"]], 77)[0],
                                    case["rows"]["77"])
  distinct = {p for c in expected["cases"] for p in small.pieces(c["text"])}
  assert len(small._piece_ids) < 80 < len(distinct)
