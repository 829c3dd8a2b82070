"""Tokenizers: one `Tokenizer` protocol; a closed-vocabulary word tokenizer implements it.

Word splitting (`split_words`): text is lower-cased, then cut into maximal runs of `[a-z0-9']`
and single other non-space characters. Punctuation (".", ",", "?", "!") is therefore KEPT, each
as its own token, so `decode(encode(text))` gives back the normalised text ("A red circle." ->
["a", "red", "circle", "."] -> "a red circle."). A word or character not in the vocabulary maps
to `unk_id` (decoded as "<unk>"); nothing is silently dropped.

A BPE tokenizer added later implements the same protocol: `encode` without specials,
`encode_batch` to a fixed context length, `decode` stopping at eos.
"""
from __future__ import annotations

import re
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in every WordTokenizer.

_WORD_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
_SPACE_BEFORE_PUNCT_RE = re.compile(r" ([.,?!;:])")


def split_words(text: str) -> list[str]:
  """Lower-cases `text` and splits it into words and single punctuation characters."""
  return _WORD_RE.findall(text.lower())


def check_text(text: str, what: str = "text") -> None:
  """Raises ValueError if `text` is not a string or has no non-space character."""
  if not isinstance(text, str):
    raise ValueError(f"{what} must be a str, got {type(text).__name__}: {text!r}")
  if not text.strip():
    raise ValueError(f"{what} is empty or whitespace-only ({text!r}); expected at least one word")


@runtime_checkable
class Tokenizer(Protocol):
  """What every tokenizer provides (word-level now, BPE later)."""

  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  unk_id: int

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos. Empty/whitespace-only text -> ValueError."""
    ...

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`: stops at the first eos, skips pad and bos."""
    ...

  def encode_batch(self, texts: Sequence[str], context_length: int) -> np.ndarray:
    """int32 `[B, context_length]`: bos + tokens + eos, truncated keeping eos, pad-filled."""
    ...


def pack_batch(token_lists: Sequence[Sequence[int]], context_length: int, *, pad_id: int,
               bos_id: int, eos_id: int) -> np.ndarray:
  """Packs token lists into int32 `[B, context_length]` rows: bos + tokens + eos + pad...

  A list longer than `context_length - 2` is truncated so that eos stays the last real token.
  Shared by all tokenizers so they agree on the layout the text towers rely on.
  """
  if not isinstance(context_length, (int, np.integer)) or context_length < 2:
    raise ValueError(f"context_length must be an int >= 2 (room for bos and eos), "
                     f"got {context_length!r}")
  out = np.full((len(token_lists), context_length), pad_id, np.int32)
  keep = context_length - 2
  for row, ids in enumerate(token_lists):
    ids = list(ids)[:keep]
    out[row, 0] = bos_id
    out[row, 1:1 + len(ids)] = ids
    out[row, 1 + len(ids)] = eos_id
  return out


def decodable_ids(ids: Iterable[int], *, eos_id: int, skip_ids: Sequence[int], vocab_size: int,
                  trailing_pad_id: int | None = None, what: str = "the vocabulary") -> list[int]:
  """The ids a tokenizer's `decode` turns into text: those before the first `eos_id`, without
  `skip_ids` and, if given, without a run of `trailing_pad_id` at the end (for a vocabulary
  whose pad id is also a real token, as CLIP's 0 = "!").

  `ids` is any int sequence or array; a float array or an id outside [0, vocab_size) is a
  ValueError naming `what`.
  """
  ids = np.asarray(ids if hasattr(ids, "__len__") else list(ids)).reshape(-1)
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"decode expects integer token ids, got dtype {ids.dtype}")
  kept = []
  for i in ids.tolist():
    if i == eos_id:
      break
    if i not in skip_ids:
      kept.append(i)
  while trailing_pad_id is not None and kept and kept[-1] == trailing_pad_id:
    kept.pop()
  bad = [i for i in kept if not 0 <= i < vocab_size]
  if bad:
    raise ValueError(f"token ids {bad[:5]} are outside {what} [0, {vocab_size})")
  return kept


class WordTokenizer:
  """Closed-vocabulary word tokenizer (see the module docstring for the splitting rule).

  Ids: pad=0, bos=1, eos=2, unk=3, then `words` in the given order (duplicates removed).
  Out-of-vocabulary words and characters encode to `unk_id`.
  """

  def __init__(self, words: Iterable[str]):
    vocab = list(SPECIALS)
    seen = set(vocab)
    for word in words:
      if not isinstance(word, str) or split_words(word) != [word]:
        raise ValueError(f"vocabulary entry {word!r} is not a single lower-case word or "
                         f"punctuation character as produced by split_words")
      if word not in seen:
        seen.add(word)
        vocab.append(word)
    self.vocab: tuple[str, ...] = tuple(vocab)
    self._ids = {word: i for i, word in enumerate(vocab)}
    self.vocab_size = len(vocab)
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self._ids[s] for s in SPECIALS)

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size})"

  def encode(self, text: str) -> list[int]:
    check_text(text)
    return [self._ids.get(word, self.unk_id) for word in split_words(text)]

  def decode(self, ids: Iterable[int]) -> str:
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == self.eos_id:
        break
      if i in (self.pad_id, self.bos_id):
        continue
      words.append(self.vocab[i] if 0 <= i < self.vocab_size else UNK)
    return _SPACE_BEFORE_PUNCT_RE.sub(r"\1", " ".join(words))

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    """Decodes each row of int `[B, L]`."""
    return [self.decode(row) for row in np.asarray(ids)]

  def encode_batch(self, texts: Sequence[str], context_length: int) -> np.ndarray:
    if isinstance(texts, str):
      raise ValueError("encode_batch expects a sequence of strings, got a single str")
    token_lists = []
    for index, text in enumerate(texts):
      check_text(text, f"text {index}")
      token_lists.append(self.encode(text))
    return pack_batch(token_lists, context_length, pad_id=self.pad_id, bos_id=self.bos_id,
                      eos_id=self.eos_id)
