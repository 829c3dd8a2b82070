"""A Hugging Face `tokenizers` tokenizer.json behind `Tokenizer`, and BPE training on captions.

`HFTokenizer(path)` wraps any tokenizer.json; its pad/bos/eos/unk ids are looked up by their token
strings (default "<pad>", "<bos>", "<eos>", "<unk>", those of `train_bpe`; pass e.g.
`pad_token="[PAD]"` for another tokenizer). The file's own post-processor (e.g. BERT's
[CLS] ... [SEP]), truncation and padding are not used: `encode` gives the ids of the text alone and
`encode_batch` packs them as every mmjax tokenizer does (bos + ids + eos, truncated keeping eos,
pad-filled, int32 `[B, L]`). `decode` decodes the ids before the first eos, pad and bos skipped.

`train_bpe(texts, vocab_size)` learns a byte-level BPE offline from the user's own captions, for
from-scratch runs on own data: ids pad=0, bos=1, eos=2, unk=3 (as `WordTokenizer`), text
NFC-normalised, whitespace runs collapsed, stripped and lower-cased; a GPT-2 style byte-level
pre-tokenizer with a prefix space, so the 256 byte symbols are always in the vocabulary and no
text produces unk.
"""
from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mmjax.data.tokenizer import (BOS, EOS, PAD, SPECIALS, UNK, check_text, decodable_ids,
                                  pack_batch)

_BYTE_ALPHABET_SIZE = 256


class HFTokenizer:
  """A `tokenizers.Tokenizer` loaded from a tokenizer.json (see the module docstring)."""

  def __init__(self, json_path: str | pathlib.Path, *, pad_token: str = PAD,
               bos_token: str = BOS, eos_token: str = EOS, unk_token: str = UNK):
    path = pathlib.Path(json_path)
    if not path.is_file():
      raise ValueError(f"tokenizer file {path} does not exist; expected a Hugging Face "
                       f"tokenizers tokenizer.json")
    try:
      tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for any unreadable file.
      raise ValueError(f"{path} is not a Hugging Face tokenizers tokenizer.json (as written by "
                       f"tokenizers.Tokenizer.save): {e}") from None
    self._setup(tokenizer, path, pad_token, bos_token, eos_token, unk_token)

  @classmethod
  def from_tokenizer(cls, tokenizer: tokenizers.Tokenizer, *, pad_token: str = PAD,
                     bos_token: str = BOS, eos_token: str = EOS,
                     unk_token: str = UNK) -> "HFTokenizer":
    """Wraps a copy of an in-memory `tokenizers.Tokenizer`."""
    if not isinstance(tokenizer, tokenizers.Tokenizer):
      raise ValueError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    wrapped = cls.__new__(cls)
    wrapped._setup(tokenizers.Tokenizer.from_str(tokenizer.to_str()), None, pad_token,
                   bos_token, eos_token, unk_token)
    return wrapped

  def _setup(self, tokenizer: tokenizers.Tokenizer, source: pathlib.Path | None,
             pad_token: str, bos_token: str, eos_token: str, unk_token: str) -> None:
    tokenizer.no_truncation()
    tokenizer.no_padding()
    where = str(source) if source is not None else "the tokenizer"
    ids = {}
    for role, token in (("pad", pad_token), ("bos", bos_token), ("eos", eos_token),
                        ("unk", unk_token)):
      ids[role] = tokenizer.token_to_id(token) if isinstance(token, str) else None
      if ids[role] is None:
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        raise ValueError(f"{where} has no token {token!r} for {role}; pass {role}_token= one "
                         f"of its tokens (its added tokens: {added[:12]})")
    self._tokenizer = tokenizer
    self.source = source
    self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
        ids["pad"], ids["bos"], ids["eos"], ids["unk"])

  def __repr__(self) -> str:
    source = str(self.source) if self.source is not None else None
    return f"HFTokenizer(vocab_size={self.vocab_size}, source={source!r})"

  def save(self, path: str | pathlib.Path) -> None:
    """Writes the tokenizer.json (reload with `HFTokenizer(path)` and the same token names)."""
    self._tokenizer.save(str(path))

  def encode(self, text: str) -> list[int]:
    check_text(text)
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], context_length: int) -> np.ndarray:
    if isinstance(texts, str):
      raise ValueError("encode_batch expects a sequence of strings, got a single str")
    for index, text in enumerate(texts):
      check_text(text, f"text {index}")
    encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return pack_batch([e.ids for e in encodings], context_length, pad_id=self.pad_id,
                      bos_id=self.bos_id, eos_id=self.eos_id)

  def decode(self, ids: Iterable[int]) -> str:
    kept = decodable_ids(ids, eos_id=self.eos_id, skip_ids=(self.pad_id, self.bos_id),
                         vocab_size=self.vocab_size)
    return self._tokenizer.decode(kept, skip_special_tokens=False).strip()

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    """Decodes each row of int `[B, L]`."""
    return [self.decode(row) for row in np.asarray(ids)]


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> HFTokenizer:
  """A byte-level BPE learnt from `texts` (see the module docstring for ids and normalisation).

  Args:
    texts: the training captions (non-empty strings).
    vocab_size: the most ids (4 specials + 256 byte symbols + merges); >= 260. Fewer come out
      when the texts allow no more merges of `min_frequency`.
    min_frequency: a pair must occur this often to be merged.
  """
  if isinstance(texts, str):
    raise ValueError("texts must be a sequence of captions, got a single str")
  texts = list(texts)
  if not texts:
    raise ValueError("texts is empty; expected the captions to learn the BPE from")
  for index, text in enumerate(texts):
    check_text(text, f"training text {index}")
  smallest = len(SPECIALS) + _BYTE_ALPHABET_SIZE
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < smallest:
    raise ValueError(f"vocab_size must be an int >= {smallest} (4 specials and the 256 byte "
                     f"symbols), got {vocab_size!r}")
  if not isinstance(min_frequency, (int, np.integer)) or min_frequency < 1:
    raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "), normalizers.Strip(),
      normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=list(SPECIALS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(texts, trainer, length=len(texts))
  return HFTokenizer.from_tokenizer(tokenizer)
