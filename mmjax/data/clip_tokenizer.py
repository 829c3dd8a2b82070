"""CLIP's byte-level BPE tokenizer: the ids of open_clip's `SimpleTokenizer` (= OpenAI CLIP's).

A text goes through the steps open_clip 3.3.0 applies, in its order:

  1. clean (`clean_text`): `ftfy.fix_text`, `html.unescape` twice, whitespace runs -> one space,
     strip, `lower()`;
  2. split into pieces with CLIP's pattern (contractions 's 't 're 've 'm 'll 'd, letter runs,
     single digits, runs of other non-space characters; special token strings first), run by
     the `regex` module, the engine open_clip uses, so the Unicode letter/number classes agree
     character for character;
  3. the `tokenizers` library: a ByteLevel pre-tokenizer maps each piece's UTF-8 bytes to 256
     printable symbols and a `BPE` model with the "</w>" end-of-word suffix merges them by rank.
     A piece that is exactly a special token string (text containing "<start_of_text>") becomes
     that special id, as in open_clip.

Ids with the full vocabulary (the packaged merges file): 0..255 the byte symbols, 256..511 the
same + "</w>", 512..49405 the merges in rank order, 49406 = sot ("<start_of_text>", the bos),
49407 = eot ("<end_of_text>", the eos); vocab_size 49408.

- pad_id = 0, as open_clip pads. Id 0 is also the real token "!" (not word-final), but a complete
  encoding never ends with it (every piece ends in a "</w>" token), so zeros after the last
  token are always padding.
- unk_id = eot_id (49407), as Hugging Face's CLIPTokenizer: byte-level BPE has a symbol for
  every byte, so no text ever produces an unknown token.
- `encode(text)`: ids without sot/eot. Empty or whitespace-only input -> ValueError (the
  protocol); text that is non-empty but cleans to nothing ("&nbsp;") -> [] and so the row
  [sot, eot, 0, ...] in `encode_batch`, as open_clip.
- `encode_batch(texts, L)`: int32 `[B, L]`, [sot] + ids + [eot] truncated to L with eot kept
  last, 0-padded: `open_clip.tokenize(texts, context_length=L)` exactly.
- `decode(ids)`: open_clip's decode (byte symbols back to UTF-8 with U+FFFD for broken
  sequences, "</w>" -> " ") of the ids after sot up to the first eot, trailing padding
  dropped, without the trailing space the last "</w>" leaves ("a photo of a cat . ").
"""
from __future__ import annotations

import gzip
import html
import json
import pathlib
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from mmjax.data.tokenizer import check_text, decodable_ids, pack_batch

DEFAULT_MERGES_PATH = (pathlib.Path(__file__).resolve().parent.parent / "assets" /
                       "clip_bpe_simple_vocab_16e6.txt.gz")
# open_clip keeps the first 49152 - 256 - 2 merges after the header line of the file.
NUM_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
HF_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_PIECE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Text that ftfy.fix_text and html.unescape return unchanged: printable ASCII without "&", plus
# tab and newline (ftfy only touches "&", control characters, "\r", escapes and non-ASCII).
# Skipping ftfy for it saves ~60 us per caption; tests check the identity on random such text.
_NOTHING_TO_FIX = regex.compile(r"[\t\n\x20-\x25\x27-\x7e]*")
_PIECE_CACHE_SIZE = 1 << 18  # pieces memoised (a few tens of MB at most)
_MAX_CACHED_PIECE = 64  # characters; longer pieces are rare and would bloat the cache


def byte_symbols() -> list[str]:
  """The 256 printable characters that stand for bytes 0..255, in CLIP's vocab order.

  Printable Latin-1 bytes stand for themselves; the others (space, controls, ...) take the
  characters from U+0100 on, in byte order. The same table as `tokenizers`' ByteLevel.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
               *range(ord("\xae"), ord("\xff") + 1)]
  others = sorted(set(range(256)) - set(printable))
  return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def clean_text(text: str) -> str:
  """open_clip's "lower" cleaning: ftfy, HTML unescape twice, whitespace collapsed, lower-case."""
  if not _NOTHING_TO_FIX.fullmatch(text):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return " ".join(text.split()).lower()


def read_merges_gz(path: str | pathlib.Path) -> list[tuple[str, str]]:
  """The merges of an open_clip/OpenAI CLIP `bpe_simple_vocab_16e6.txt.gz`-style file, by rank."""
  path = pathlib.Path(path)
  expected = "a gzip-compressed CLIP merges file like open_clip's bpe_simple_vocab_16e6.txt.gz"
  if not path.is_file():
    raise ValueError(f"CLIP merges file {path} does not exist; expected {expected}")
  try:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not {expected} ({type(e).__name__}: {e})") from None
  return _parse_merge_lines(lines[1:NUM_MERGES + 1], path, first_line=2)


def _parse_merge_lines(lines: list[str], path, first_line: int) -> list[tuple[str, str]]:
  if lines and lines[-1] == "":
    lines = lines[:-1]
  merges = [tuple(line.split()) for line in lines]
  for number, merge in enumerate(merges):
    if len(merge) != 2:
      raise ValueError(f"{path} is not a CLIP merges file: line {number + first_line} is "
                       f"{lines[number]!r}, expected two space-separated symbols")
  if not merges:
    raise ValueError(f"{path} is not a CLIP merges file: it holds no merge lines")
  return merges


def _read_hf_vocab(path: pathlib.Path) -> dict[str, int]:
  try:
    vocab = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a CLIP vocab.json ({type(e).__name__}: {e})") from None
  if not isinstance(vocab, dict) or not all(
      isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
    raise ValueError(f"{path} is not a CLIP vocab.json: expected a JSON object token -> id")
  return vocab


class ClipTokenizer:
  """CLIP's byte-level BPE (see the module docstring for the exact steps and special ids).

  Args:
    vocab_path: an open_clip/OpenAI CLIP merges file (`bpe_simple_vocab_16e6.txt.gz`); None ->
      the one shipped in mmjax/assets (OpenAI's, MIT licensed). As open_clip, the first 48,894
      merges after the header line are used.
  """

  def __init__(self, vocab_path: str | pathlib.Path | None = None):
    path = DEFAULT_MERGES_PATH if vocab_path is None else pathlib.Path(vocab_path)
    merges = read_merges_gz(path)
    symbols = byte_symbols()
    tokens = (symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] +
              list(OPEN_CLIP_SPECIALS))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
      raise ValueError(f"{path} is not a CLIP merges file: some merges produce the same token")
    self._setup(vocab, merges, OPEN_CLIP_SPECIALS, path)

  @classmethod
  def from_hf(cls, vocab_json: str | pathlib.Path, merges_txt: str | pathlib.Path
              ) -> "ClipTokenizer":
    """The tokenizer of a Hugging Face openai/clip-vit-* repository (vocab.json + merges.txt).

    Its specials are "<|startoftext|>" / "<|endoftext|>" (the same ids, 49406 / 49407).
    """
    vocab_json, merges_txt = pathlib.Path(vocab_json), pathlib.Path(merges_txt)
    for path in (vocab_json, merges_txt):
      if not path.is_file():
        raise ValueError(f"{path} does not exist; expected a Hugging Face CLIP vocab.json and "
                         f"merges.txt")
    vocab = _read_hf_vocab(vocab_json)
    try:
      lines = merges_txt.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"{merges_txt} is not a CLIP merges.txt ({type(e).__name__}: {e})") from None
    has_header = bool(lines) and lines[0].startswith("#version")
    merges = _parse_merge_lines(lines[1:] if has_header else lines, merges_txt,
                                first_line=2 if has_header else 1)
    tokenizer = cls.__new__(cls)
    tokenizer._setup(vocab, merges, HF_SPECIALS, vocab_json)
    return tokenizer

  def _setup(self, vocab: dict[str, int], merges: list[tuple[str, str]],
             specials: Sequence[str], source: pathlib.Path) -> None:
    required = [t for symbol in byte_symbols() for t in (symbol, symbol + END_OF_WORD)]
    missing = [t for t in [*required, *specials] if t not in vocab]
    if missing:
      raise ValueError(f"{source}: the CLIP vocabulary lacks {len(missing)} required tokens, "
                       f"e.g. {missing[:3]}; expected every byte symbol, with and without "
                       f"{END_OF_WORD!r}, and {list(specials)}")
    for rank, (left, right) in enumerate(merges):
      if left not in vocab or right not in vocab or left + right not in vocab:
        raise ValueError(f"{source}: merge {rank} ({left!r} {right!r}) uses or makes a token "
                         f"that is not in the vocabulary; expected a consistent CLIP BPE")
    bpe = tokenizers.Tokenizer(models.BPE(vocab, merges, end_of_word_suffix=END_OF_WORD))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " ")])
    bpe.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                            for s in specials])
    self._bpe = bpe
    self._piece_ids: dict[str, list[int]] = {}
    self._pieces_re = regex.compile(
        "|".join(regex.escape(s) for s in specials) + "|" + _PIECE_PATTERN, regex.IGNORECASE)
    self.source = source
    self.vocab_size = max(vocab.values()) + 1
    self.bos_id, self.eos_id = (vocab[s] for s in specials)
    self.pad_id = 0
    self.unk_id = self.eos_id

  def __repr__(self) -> str:
    return f"ClipTokenizer(vocab_size={self.vocab_size}, source={str(self.source)!r})"

  def pieces(self, text: str) -> list[str]:
    """The pre-tokens of `text` after cleaning (each becomes one or more BPE tokens)."""
    return self._pieces_re.findall(clean_text(text))

  def _encode_pieces(self, piece_lists: Sequence[list[str]]) -> list[list[int]]:
    # Pieces repeat across captions (as words do), and a dict hit costs ~0.1 us where the
    # tokenizers call costs ~5 us per piece: memoise piece -> ids, as open_clip does. Only new
    # pieces go to `tokenizers`, one pre-tokenized word each (BPE never crosses pieces). The
    # cache is replaced, never cleared, so a concurrent call's `cache` stays complete.
    cache = self._piece_ids
    new = list({piece for pieces in piece_lists for piece in pieces if piece not in cache})
    fresh = {}
    if new:
      encodings = self._bpe.encode_batch_fast([[piece] for piece in new], is_pretokenized=True,
                                              add_special_tokens=False)
      fresh = {piece: encoding.ids for piece, encoding in zip(new, encodings)}
      if len(cache) + len(fresh) > _PIECE_CACHE_SIZE:
        self._piece_ids = {}
      self._piece_ids.update(
          (piece, ids) for piece, ids in fresh.items() if len(piece) <= _MAX_CACHED_PIECE)
    return [[i for piece in pieces for i in (fresh.get(piece) or cache[piece])]
            for pieces in piece_lists]

  def encode(self, text: str) -> list[int]:
    check_text(text)
    return self._encode_pieces([self.pieces(text)])[0]

  def encode_batch(self, texts: Sequence[str], context_length: int) -> np.ndarray:
    if isinstance(texts, str):
      raise ValueError("encode_batch expects a sequence of strings, got a single str")
    for index, text in enumerate(texts):
      check_text(text, f"text {index}")
    piece_lists = [self.pieces(text) for text in texts]
    if isinstance(context_length, (int, np.integer)):
      # Every piece yields >= 1 token, so the first L - 2 pieces hold all tokens a row keeps.
      piece_lists = [pieces[:max(context_length - 2, 0)] for pieces in piece_lists]
    return pack_batch(self._encode_pieces(piece_lists), context_length, pad_id=self.pad_id,
                      bos_id=self.bos_id, eos_id=self.eos_id)

  def decode(self, ids: Iterable[int]) -> str:
    kept = decodable_ids(ids, eos_id=self.eos_id, skip_ids=(self.bos_id,),
                         vocab_size=self.vocab_size, trailing_pad_id=self.pad_id,
                         what="the CLIP vocabulary")
    return self._bpe.decode(kept, skip_special_tokens=False).rstrip(" ")

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    """Decodes each row of int `[B, L]`."""
    return [self.decode(row) for row in np.asarray(ids)]
