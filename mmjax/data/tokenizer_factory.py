"""`build_tokenizer(spec)`: a `Tokenizer` from a one-string spec (e.g. `config.data.tokenizer`).

Specs:
  "clip"                 CLIP's BPE with the packaged OpenAI vocabulary (`ClipTokenizer()`)
  "clip:PATH"            CLIP's BPE from a bpe_simple_vocab_16e6.txt.gz-style merges file, or
                         from a directory holding a Hugging Face vocab.json + merges.txt
  "sentencepiece:PATH"   a SentencePiece .model (`SentencePieceTokenizer`, eos added, no bos)
  "hf:PATH"              a Hugging Face tokenizers tokenizer.json (`HFTokenizer`)
  "bpe"                  a byte-level BPE trained now on `train_texts` (`train_bpe`), with
                         `vocab_size` required
The tokenizer modules are imported only for the spec that needs them.
"""
from __future__ import annotations

import pathlib
from typing import Iterable

from mmjax.data.tokenizer import Tokenizer

SPEC_FORMS = ("clip", "clip:PATH", "sentencepiece:PATH", "hf:PATH", "bpe")


def _bad_spec(spec, why: str) -> ValueError:
  return ValueError(f"tokenizer spec {spec!r}: {why}; expected one of {', '.join(SPEC_FORMS)}")


def build_tokenizer(spec: str, *, train_texts: Iterable[str] | None = None,
                    vocab_size: int | None = None) -> Tokenizer:
  """The tokenizer `spec` names (see the module docstring for the forms).

  `train_texts` and `vocab_size` are for "bpe" only; passing them with another spec is an error
  rather than silently unused.
  """
  if not isinstance(spec, str):
    raise _bad_spec(spec, f"not a str but {type(spec).__name__}")
  kind, colon, path = spec.partition(":")
  if kind == "bpe" and not colon:
    if train_texts is None or vocab_size is None:
      raise _bad_spec(spec, "'bpe' trains on the captions and needs both train_texts= and "
                            "vocab_size=")
    from mmjax.data.hf_tokenizer import train_bpe
    return train_bpe(train_texts, vocab_size)
  if train_texts is not None or vocab_size is not None:
    raise _bad_spec(spec, "train_texts= and vocab_size= only apply to 'bpe'")
  if kind == "clip" and not colon:
    from mmjax.data.clip_tokenizer import ClipTokenizer
    return ClipTokenizer()
  if kind not in ("clip", "sentencepiece", "hf") or not colon:
    raise _bad_spec(spec, "unknown form")
  if not path:
    raise _bad_spec(spec, f"no PATH after '{kind}:'")
  path = pathlib.Path(path).expanduser()
  if kind == "clip":
    from mmjax.data.clip_tokenizer import ClipTokenizer
    if path.is_dir():
      return ClipTokenizer.from_hf(path / "vocab.json", path / "merges.txt")
    return ClipTokenizer(path)
  if kind == "sentencepiece":
    from mmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
    return SentencePieceTokenizer(path)
  from mmjax.data.hf_tokenizer import HFTokenizer
  return HFTokenizer(path)
