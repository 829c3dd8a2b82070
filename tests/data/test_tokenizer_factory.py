"""build_tokenizer: each spec form gives its tokenizer; unknown specs and files of the wrong kind
fail with a ValueError naming the spec or file and what was expected."""
import gzip
import pickle

import numpy as np
import pytest
import sentencepiece

from mmjax.data.clip_tokenizer import DEFAULT_MERGES_PATH, ClipTokenizer
from mmjax.data.hf_tokenizer import HFTokenizer
from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from mmjax.data.tokenizer_factory import build_tokenizer

CAPTIONS = [f"a {c} {s} left of a {s2}." for c in ("red", "green", "blue", "cyan")
            for s in ("circle", "star", "cross") for s2 in ("square", "diamond")] * 5


def test_clip_specs():
  for spec in ("clip", f"clip:{DEFAULT_MERGES_PATH}"):
    tok = build_tokenizer(spec)
    assert isinstance(tok, ClipTokenizer)
    # open_clip.tokenize(["a photo of a cat."], 8) (see the CLIP fixture).
    np.testing.assert_array_equal(tok.encode_batch(["a photo of a cat."], 8)[0],
                                  [49406, 320, 1125, 539, 320, 2368, 269, 49407])


def test_sentencepiece_hf_and_bpe_specs(tmp_path):
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CAPTIONS), model_prefix=str(tmp_path / "sp"), vocab_size=40,
      hard_vocab_limit=False, minloglevel=2, num_threads=1)
  sp = build_tokenizer(f"sentencepiece:{tmp_path / 'sp.model'}")
  assert isinstance(sp, SentencePieceTokenizer) and (sp.add_bos, sp.add_eos) == (False, True)
  bpe = build_tokenizer("bpe", train_texts=CAPTIONS, vocab_size=270)
  assert isinstance(bpe, HFTokenizer) and (bpe.pad_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2)
  assert bpe.vocab_size == 270  # the corpus allows more merges: vocab_size is what binds
  bpe.save(tmp_path / "tokenizer.json")
  hf = build_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
  assert isinstance(hf, HFTokenizer)
  assert hf.encode(CAPTIONS[3]) == bpe.encode(CAPTIONS[3])
  # Grain worker processes receive the tokenizer pickled.
  for tok in (sp, bpe, hf, build_tokenizer("clip")):
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok)).encode_batch(CAPTIONS, 12),
                                  tok.encode_batch(CAPTIONS, 12))


@pytest.mark.parametrize("spec", ["shapeworld", "word", "clip:", "hf", "sentencepiece",
                                  "bpe:tokenizer.json", "CLIP", "gpt2:path"])
def test_unknown_spec_lists_the_forms(spec):
  with pytest.raises(ValueError, match=r"expected one of clip, clip:PATH, sentencepiece:PATH, "
                                       r"hf:PATH, bpe"):
    build_tokenizer(spec)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="not a str"):
    build_tokenizer(None)
  with pytest.raises(ValueError, match="train_texts= and vocab_size="):
    build_tokenizer("bpe", train_texts=CAPTIONS)
  with pytest.raises(ValueError, match="only apply to 'bpe'"):
    build_tokenizer("clip", vocab_size=1000)


def test_files_of_the_wrong_kind_name_the_file(tmp_path):
  text = tmp_path / "readme.txt"
  text.write_text("this is not a tokenizer\n")
  with pytest.raises(ValueError, match=r"readme\.txt is not a SentencePiece model"):
    build_tokenizer(f"sentencepiece:{text}")
  with pytest.raises(ValueError, match=r"readme\.txt is not a Hugging Face tokenizers"):
    build_tokenizer(f"hf:{text}")
  with pytest.raises(ValueError, match=r"readme\.txt is not a gzip-compressed CLIP merges"):
    build_tokenizer(f"clip:{text}")
  not_merges = tmp_path / "captions.txt.gz"
  not_merges.write_bytes(gzip.compress(b"header\none two three\n"))
  with pytest.raises(ValueError, match=r"captions\.txt\.gz is not a CLIP merges file"):
    build_tokenizer(f"clip:{not_merges}")
  with pytest.raises(ValueError, match=r"vocab\.json does not exist"):
    build_tokenizer(f"clip:{tmp_path}")  # a directory without the Hugging Face files
  with pytest.raises(ValueError, match=r"missing\.model does not exist"):
    build_tokenizer(f"sentencepiece:{tmp_path / 'missing.model'}")
