"""Word tokenizer: round trips, the packed layout, unknown words and bad input; no import
cycle among the mmjax.data modules."""
import ast
import pathlib

import numpy as np
import pytest

import mmjax.data
from mmjax.data import shapeworld
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.data.tokenizer import Tokenizer, WordTokenizer, split_words


def test_split_words_keeps_punctuation():
  assert split_words("A Red circle, LEFT of a star.") == [
      "a", "red", "circle", ",", "left", "of", "a", "star", "."]
  assert split_words("  is it?  ") == ["is", "it", "?"]


def test_special_ids_and_protocol():
  tok = shapeworld_tokenizer()
  assert isinstance(tok, Tokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.vocab_size == len(shapeworld.VOCAB) + 4
  assert set(shapeworld.COLOURS) | set(shapeworld.SHAPES) | set(shapeworld.SIZES) <= set(tok.vocab)


def test_round_trip_normalises_case_and_spacing():
  tok = shapeworld_tokenizer()
  text = "A small red circle   left of a large blue star."
  assert tok.decode(tok.encode(text)) == "a small red circle left of a large blue star."
  assert tok.decode(tok.encode("how many shapes are there?")) == "how many shapes are there?"


def test_unknown_words_map_to_unk():
  tok = WordTokenizer(["a", "red", "circle"])
  ids = tok.encode("a purple circle!")
  assert ids == [4, tok.unk_id, 6, tok.unk_id]
  assert tok.decode(ids) == "a <unk> circle <unk>"


def test_encode_batch_matches_naive_layout():
  tok = shapeworld_tokenizer()
  texts = ["a red circle.", "there is a small blue star left of a large green square."]
  length = 8
  out = tok.encode_batch(texts, length)
  assert out.dtype == np.int32 and out.shape == (2, length)
  for row, text in zip(out, texts):
    ids = tok.encode(text)[:length - 2]
    expected = [tok.bos_id] + ids + [tok.eos_id]
    expected += [tok.pad_id] * (length - len(expected))
    np.testing.assert_array_equal(row, expected)
  # The long caption was truncated with eos kept last.
  assert out[1, -1] == tok.eos_id
  assert tok.decode(out[0]) == "a red circle."


def test_decode_stops_at_eos_and_skips_pad_bos():
  tok = shapeworld_tokenizer()
  red, star = tok.encode("red star")
  assert tok.decode([tok.bos_id, red, tok.pad_id, star, tok.eos_id, red]) == "red star"
  assert tok.decode(np.array([tok.bos_id, tok.eos_id])) == ""


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text_raises(bad):
  tok = shapeworld_tokenizer()
  with pytest.raises(ValueError, match="empty"):
    tok.encode(bad)
  with pytest.raises(ValueError, match="text 1"):
    tok.encode_batch(["a red circle", bad], 8)


def test_bad_arguments_raise():
  tok = shapeworld_tokenizer()
  with pytest.raises(ValueError, match="context_length"):
    tok.encode_batch(["a red circle"], 1)
  with pytest.raises(ValueError, match="single str"):
    tok.encode_batch("a red circle", 8)
  with pytest.raises(ValueError, match="vocabulary entry"):
    WordTokenizer(["two words"])


def _data_imports() -> dict[str, set[str]]:
  """mmjax.data module -> the mmjax.data modules it imports anywhere (late imports too)."""
  folder = pathlib.Path(mmjax.data.__file__).parent
  graph = {}
  for path in folder.glob("*.py"):
    name = "mmjax.data" if path.stem == "__init__" else f"mmjax.data.{path.stem}"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmjax.data"):
        targets |= {f"{node.module}.{a.name}" if node.module == "mmjax.data" else node.module
                    for a in node.names}
      elif isinstance(node, ast.Import):
        targets |= {a.name for a in node.names if a.name.startswith("mmjax.data")}
    graph[name] = {t for t in targets if t != name}
  return graph


def test_data_modules_import_without_cycles():
  graph = _data_imports()
  assert "mmjax.data.tokenizer" in graph["mmjax.data.shapeworld_text"]
  assert not graph["mmjax.data.tokenizer"] & {"mmjax.data.shapeworld_text", "mmjax.data"}

  def visit(name, stack):
    assert name not in stack, f"import cycle: {' -> '.join(stack + [name])}"
    for target in graph.get(name, ()):
      if target != "mmjax.data":  # the package __init__ only re-exports
        visit(target, stack + [name])
  for name in graph:
    visit(name, [])
