"""SentencePiece tokenizer (the vocabularies of SigLIP/big_vision, T5, Gemma) behind `Tokenizer`.

Ids are the model's own: `pad_id`, `bos_id`, `eos_id`, `unk_id` are what the .model file
declares (`SentencePieceProcessor.pad_id()` ...; -1 for a piece it does not have).
- A model without a pad piece (sentencepiece's default training: unk=0, bos=1, eos=2, pad=-1)
  pads with its unk id, i.e. with 0 for such models, as pipelines that pad with 0 do (decode
  then also drops unk pieces); pass `pad_id=` to choose another id.
- `encode(text)`: `SentencePieceProcessor.encode(text)` (the model's own normalisation), without
  bos/eos. Empty or whitespace-only text -> ValueError.
- `encode_batch(texts, L)`: int32 `[B, L]`: [bos if add_bos] + ids + [eos if add_eos],
  truncated so that eos stays the last real token, then pad_id. With add_bos=False (big_vision's
  SigLIP text input) a row starts directly with the first piece.
- `decode(ids)`: the text of the ids before the first eos, pad and bos skipped.
"""
from __future__ import annotations

import pathlib
from typing import Iterable, Sequence

import numpy as np
import sentencepiece

from mmjax.data.tokenizer import check_text, decodable_ids


class SentencePieceTokenizer:
  """A sentencepiece `.model` file (see the module docstring for ids and layout).

  Args:
    model_path: the serialized SentencePiece model (`*.model`, a ModelProto).
    add_bos: start each `encode_batch` row with `bos_id` (the model must have a bos piece).
    add_eos: end each row with `eos_id` (the model must have an eos piece).
    pad_id: id that fills rows after the text; None -> the model's pad, or its unk if it has none.
  """

  def __init__(self, model_path: str | pathlib.Path, *, add_bos: bool = False,
               add_eos: bool = True, pad_id: int | None = None):
    path = pathlib.Path(model_path)
    if not path.is_file():
      raise ValueError(f"SentencePiece model {path} does not exist; expected a *.model file")
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{path} is not a SentencePiece model (a serialized ModelProto *.model "
                       f"file): {e}") from None
    self.source = path
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id, self.eos_id, self.unk_id = self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id()
    model_pad = self._sp.pad_id()
    self.pad_id = int(pad_id) if pad_id is not None else (
        model_pad if model_pad >= 0 else self.unk_id)
    if not 0 <= self.pad_id < self.vocab_size:
      raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary [0, {self.vocab_size}) "
                       f"of {path}")
    for flag, name, special in ((add_bos, "add_bos", self.bos_id),
                                (add_eos, "add_eos", self.eos_id)):
      if flag and special < 0:
        raise ValueError(f"{name}=True but {path} defines no {name[4:]} piece; pass {name}=False")
    self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)

  def __repr__(self) -> str:
    return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, source={str(self.source)!r}, "
            f"add_bos={self.add_bos}, add_eos={self.add_eos})")

  def encode(self, text: str) -> list[int]:
    check_text(text)
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str], context_length: int) -> np.ndarray:
    if isinstance(texts, str):
      raise ValueError("encode_batch expects a sequence of strings, got a single str")
    for index, text in enumerate(texts):
      check_text(text, f"text {index}")
    prefix = [self.bos_id] if self.add_bos else []
    suffix = [self.eos_id] if self.add_eos else []
    if (not isinstance(context_length, (int, np.integer))
        or context_length < max(len(prefix) + len(suffix), 1)):
      raise ValueError(f"context_length must be an int >= {max(len(prefix) + len(suffix), 1)} "
                       f"(room for the bos/eos this tokenizer adds), got {context_length!r}")
    keep = context_length - len(prefix) - len(suffix)
    out = np.full((len(texts), context_length), self.pad_id, np.int32)
    for row, ids in enumerate(self._sp.encode(list(texts), out_type=int)):
      tokens = prefix + ids[:keep] + suffix
      out[row, :len(tokens)] = tokens
    return out

  def decode(self, ids: Iterable[int]) -> str:
    kept = decodable_ids(ids, eos_id=self.eos_id, skip_ids=(self.pad_id, self.bos_id),
                         vocab_size=self.vocab_size, what=f"the vocabulary of {self.source}")
    return self._sp.decode(kept)

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    """Decodes each row of int `[B, L]`."""
    return [self.decode(row) for row in np.asarray(ids)]
