"""BLEU exactly as sacrebleu 2.x computes it (host-side Python).

Corpus BLEU sums n-gram statistics over all segments (it does not average sentence scores).
Per segment: the hypothesis n-gram counts (n = 1..4) are clipped by the maximum count over
its references, and the reference length is the one closest to the hypothesis length (ties
-> the shorter). Brevity penalty exp(1 - r/c) when c < r. Smoothing (Chen & Cherry 2014):
'none', 'floor' (method 1, default 0.1), 'add-k' (method 2, default 1), 'exp' (method 3,
mteval's). An order with no hypothesis n-gram at all has precision 0 whose log is floored
to -9999999999, so a corpus of hypotheses shorter than 4 tokens scores 0 even with 'exp'
unless `effective_order` (the default of `sentence_bleu`) drops that order.
"""
from collections import Counter
from collections.abc import Sequence
import functools
import math
import re

MAX_NGRAM_ORDER = 4
SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}

# mteval-v13a's language-dependent (Western) tokenisation rules, in order.
_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
)


@functools.lru_cache(maxsize=2**16)
def tokenize_13a(line: str) -> str:
  """mteval-v13a tokenisation (sacrebleu's default '13a' tokenizer)."""
  line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
  if "&" in line:
    line = (line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
            .replace("&gt;", ">"))
  line = f" {line} "
  for pattern, replacement in _13A_RULES:
    line = pattern.sub(replacement, line)
  return " ".join(line.split())


def _tokenize_char(line: str) -> str:
  return " ".join(line)


_TOKENIZERS = {"13a": tokenize_13a, "none": lambda line: line, "char": _tokenize_char}


def _preprocess(segment: str, tokenize: str, lowercase: bool) -> str:
  if lowercase:
    segment = segment.lower()
  return _TOKENIZERS[tokenize](segment.rstrip())


def _ngrams(line: str, max_order: int) -> tuple[Counter, int]:
  tokens = line.split()
  counts = Counter()
  for n in range(1, max_order + 1):
    counts.update(zip(*[tokens[i:] for i in range(n)]))
  return counts, len(tokens)


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
  closest_diff, closest_len = -1, -1
  for ref_len in ref_lens:
    diff = abs(hyp_len - ref_len)
    if closest_diff == -1 or diff < closest_diff:
      closest_diff, closest_len = diff, ref_len
    elif diff == closest_diff and ref_len < closest_len:
      closest_len = ref_len
  return closest_len


def segment_statistics(hypothesis: str, references: Sequence[str], *, tokenize: str = "13a",
                       lowercase: bool = False, max_order: int = MAX_NGRAM_ORDER
                       ) -> list[int]:
  """[hyp_len, ref_len, correct_1..N, total_1..N] for one segment (sacrebleu's layout)."""
  ref_counts, ref_lens = {}, []
  for reference in references:
    counts, length = _ngrams(_preprocess(reference, tokenize, lowercase), max_order)
    ref_lens.append(length)
    if not ref_counts:
      ref_counts = counts
      continue
    for ngram, count in counts.items():
      if count > ref_counts.get(ngram, 0):
        ref_counts[ngram] = count
  hyp_counts, hyp_len = _ngrams(_preprocess(hypothesis, tokenize, lowercase), max_order)
  correct, total = [0] * max_order, [0] * max_order
  for ngram, count in hyp_counts.items():
    n = len(ngram) - 1
    total[n] += count
    ref_count = ref_counts.get(ngram)
    if ref_count is not None:
      correct[n] += count if count < ref_count else ref_count
  return [hyp_len, _closest_ref_len(hyp_len, ref_lens)] + correct + total


def bleu_from_statistics(statistics: Sequence[float], *, smooth: str = "exp",
                         smooth_value: float | None = None, effective_order: bool = False,
                         max_order: int = MAX_NGRAM_ORDER) -> float:
  """BLEU (0-100) from summed statistics [sys_len, ref_len, correct_1..N, total_1..N]."""
  sys_len, ref_len = int(statistics[0]), int(statistics[1])
  correct = list(statistics[2:2 + max_order])
  total = list(statistics[2 + max_order:2 + 2 * max_order])
  if smooth_value is None:
    smooth_value = SMOOTH_DEFAULTS[smooth]
  brevity_penalty = 1.0
  if sys_len < ref_len:
    brevity_penalty = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
  if not any(correct):
    return 0.0
  precisions = [0.0] * max_order
  smooth_mteval = 1.0
  eff_order = max_order
  for n in range(1, max_order + 1):
    if smooth == "add-k" and n > 1:
      correct[n - 1] += smooth_value
      total[n - 1] += smooth_value
    if total[n - 1] == 0:
      break
    if effective_order:
      eff_order = n
    if correct[n - 1] == 0:
      if smooth == "exp":
        smooth_mteval *= 2
        precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1])
      elif smooth == "floor":
        precisions[n - 1] = 100.0 * smooth_value / total[n - 1]
    else:
      precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1]
  log_sum = sum([math.log(p) if p != 0.0 else -9999999999 for p in precisions[:eff_order]])
  return brevity_penalty * math.exp(log_sum / eff_order)


def _check_args(smooth: str, tokenize: str) -> None:
  if smooth not in SMOOTH_DEFAULTS:
    raise ValueError(f"smooth must be one of {sorted(SMOOTH_DEFAULTS)}, got {smooth!r}.")
  if tokenize not in _TOKENIZERS:
    raise ValueError(f"tokenize must be one of {sorted(_TOKENIZERS)}, got {tokenize!r}.")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *,
                smooth: str = "exp", smooth_value: float | None = None,
                tokenize: str = "13a", lowercase: bool = False,
                effective_order: bool = False) -> float:
  """Corpus BLEU (0-100), equal to `sacrebleu.corpus_bleu(...).score`.

  Args:
    hypotheses: N hypothesis strings.
    references: N lists; references[i] holds the reference strings of hypothesis i (their
      number may vary; None entries are skipped). Note sacrebleu takes the transpose
      (one stream per reference index).
    smooth: 'exp' (default), 'floor', 'add-k' or 'none'.
    smooth_value: value for 'floor' (default 0.1) and 'add-k' (default 1).
    tokenize: '13a' (default), 'char' or 'none'.
    lowercase: lowercase before tokenising.
    effective_order: ignore n-gram orders with no n-gram (sentence-level setting).

  Returns:
    The BLEU score as a float in [0, 100].
  """
  _check_args(smooth, tokenize)
  if isinstance(hypotheses, str) or isinstance(references, str):
    raise ValueError("hypotheses must be a list of strings and references a list of lists "
                     "of strings.")
  if len(hypotheses) != len(references):
    raise ValueError(f"references must hold one list per hypothesis: got {len(hypotheses)} "
                     f"hypotheses and {len(references)} reference lists.")
  if not hypotheses:
    raise ValueError("hypotheses is empty.")
  totals = [0] * (2 + 2 * MAX_NGRAM_ORDER)
  for hypothesis, refs in zip(hypotheses, references):
    if isinstance(refs, str):
      raise ValueError(f"references[i] must be a list of strings, got the string {refs!r}.")
    refs = [r for r in refs if r is not None]
    stats = segment_statistics(hypothesis, refs, tokenize=tokenize, lowercase=lowercase)
    totals = [a + b for a, b in zip(totals, stats)]
  return bleu_from_statistics(totals, smooth=smooth, smooth_value=smooth_value,
                              effective_order=effective_order)


def sentence_bleu(hypothesis: str, references: Sequence[str], *, smooth: str = "exp",
                  smooth_value: float | None = None, tokenize: str = "13a",
                  lowercase: bool = False, effective_order: bool = True) -> float:
  """Sentence BLEU (0-100), equal to `sacrebleu.sentence_bleu(...).score`.

  Args:
    hypothesis: one hypothesis string.
    references: its reference strings.
    smooth, smooth_value, tokenize, lowercase: as `corpus_bleu`.
    effective_order: True by default, as sacrebleu's sentence_bleu.

  Returns:
    The BLEU score as a float in [0, 100].
  """
  if isinstance(references, str):
    raise ValueError("references must be a list of strings, got a single string.")
  return corpus_bleu([hypothesis], [list(references)], smooth=smooth,
                     smooth_value=smooth_value, tokenize=tokenize, lowercase=lowercase,
                     effective_order=effective_order)
