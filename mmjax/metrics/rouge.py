"""ROUGE-N, ROUGE-L and ROUGE-Lsum exactly as google's rouge-score computes them (host-side).

Tokenisation: lowercase, every run of characters outside [a-z0-9] becomes a space, split;
with `use_stemmer`, tokens longer than 3 characters are Porter-stemmed (NLTK's variant).
ROUGE-N: clipped n-gram overlap, P = overlap / max(#pred n-grams, 1), R = overlap /
max(#target n-grams, 1). ROUGE-L: LCS of the token sequences. ROUGE-Lsum: the summary-level
union LCS over newline-separated sentences (ROUGE-1.5.5's "-e ... -a" summary mode).
F = 2PR / (P + R) (0 when P + R = 0). With several targets, each rouge type keeps the
target with the best F (rouge-score's `score_multi`; the first on ties).
"""
from collections import Counter
from collections.abc import Sequence
import re

from mmjax.metrics.porter import porter_stem

_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")
_ROUGE_N = re.compile(r"rouge[0-9]$")


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
  """rouge-score's default tokenizer."""
  text = _NON_ALPHANUM.sub(" ", text.lower())
  tokens = _SPACES.split(text)
  if use_stemmer:
    tokens = [porter_stem(t) if len(t) > 3 else t for t in tokens]
  return [t for t in tokens if _VALID_TOKEN.match(t)]


def _fmeasure(precision: float, recall: float) -> float:
  if precision + recall > 0:
    return 2 * precision * recall / (precision + recall)
  return 0.0


def _ngram_counts(tokens, n):
  return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _score_ngrams(target_tokens, prediction_tokens, n):
  target_ngrams = _ngram_counts(target_tokens, n)
  prediction_ngrams = _ngram_counts(prediction_tokens, n)
  overlap = sum(min(count, prediction_ngrams[ngram]) for ngram, count in target_ngrams.items())
  precision = overlap / max(sum(prediction_ngrams.values()), 1)
  recall = overlap / max(sum(target_ngrams.values()), 1)
  return precision, recall, _fmeasure(precision, recall)


def _lcs_table(ref, can):
  table = [[0] * (len(can) + 1) for _ in range(len(ref) + 1)]
  for i in range(1, len(ref) + 1):
    row, previous = table[i], table[i - 1]
    ref_token = ref[i - 1]
    for j in range(1, len(can) + 1):
      if ref_token == can[j - 1]:
        row[j] = previous[j - 1] + 1
      else:
        row[j] = previous[j] if previous[j] >= row[j - 1] else row[j - 1]
  return table


def _score_lcs(target_tokens, prediction_tokens):
  if not target_tokens or not prediction_tokens:
    return 0, 0, 0
  lcs_length = _lcs_table(target_tokens, prediction_tokens)[-1][-1]
  precision = lcs_length / len(prediction_tokens)
  recall = lcs_length / len(target_tokens)
  return precision, recall, _fmeasure(precision, recall)


def _lcs_indices(ref, can):
  """Indices into `ref` of one LCS, read back as rouge-score does (ties move up a row)."""
  table = _lcs_table(ref, can)
  i, j = len(ref), len(can)
  indices = []
  while i > 0 and j > 0:
    if ref[i - 1] == can[j - 1]:
      indices.append(i - 1)
      i -= 1
      j -= 1
    elif table[i][j - 1] > table[i - 1][j]:
      j -= 1
    else:
      i -= 1
  return indices


def _score_summary_lcs(target_sents, prediction_sents):
  if not target_sents or not prediction_sents:
    return 0, 0, 0
  m = sum(map(len, target_sents))
  n = sum(map(len, prediction_sents))
  if not n or not m:
    return 0, 0, 0
  target_counts, prediction_counts = Counter(), Counter()
  for sent in target_sents:
    target_counts.update(sent)
  for sent in prediction_sents:
    prediction_counts.update(sent)
  hits = 0
  for ref in target_sents:
    union = sorted(set().union(*[_lcs_indices(ref, can) for can in prediction_sents]))
    for token in (ref[i] for i in union):
      if prediction_counts[token] > 0 and target_counts[token] > 0:
        hits += 1
        prediction_counts[token] -= 1
        target_counts[token] -= 1
  recall = hits / m
  precision = hits / n
  return precision, recall, _fmeasure(precision, recall)


def _check_types(rouge_types: Sequence[str]) -> None:
  if isinstance(rouge_types, str):
    raise ValueError(f"rouge_types must be a sequence of names, got the string {rouge_types!r}.")
  for rouge_type in rouge_types:
    if rouge_type not in ("rougeL", "rougeLsum") and not (
        _ROUGE_N.match(rouge_type) and int(rouge_type[5:]) > 0):
      raise ValueError(f"unknown rouge type {rouge_type!r}; expected rouge1..rouge9, rougeL "
                       "or rougeLsum.")


def rouge_pair(target: str, prediction: str,
               rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL", "rougeLsum"),
               use_stemmer: bool = False) -> dict[str, tuple[float, float, float]]:
  """{rouge_type: (precision, recall, fmeasure)} for one pair, as RougeScorer.score."""
  _check_types(rouge_types)
  target_tokens = rouge_tokenize(target, use_stemmer)
  prediction_tokens = rouge_tokenize(prediction, use_stemmer)
  result = {}
  for rouge_type in rouge_types:
    if rouge_type == "rougeL":
      result[rouge_type] = _score_lcs(target_tokens, prediction_tokens)
    elif rouge_type == "rougeLsum":
      target_sents = [rouge_tokenize(s, use_stemmer) for s in target.split("\n") if s]
      prediction_sents = [rouge_tokenize(s, use_stemmer) for s in prediction.split("\n") if s]
      result[rouge_type] = _score_summary_lcs(target_sents, prediction_sents)
    else:
      result[rouge_type] = _score_ngrams(target_tokens, prediction_tokens, int(rouge_type[5:]))
  return result


def rouge_multi(targets: Sequence[str], prediction: str,
                rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL", "rougeLsum"),
                use_stemmer: bool = False) -> dict[str, tuple[float, float, float]]:
  """Best-F target per rouge type, as RougeScorer.score_multi."""
  if not targets:
    raise ValueError("targets is empty; each prediction needs at least one target.")
  scores = [rouge_pair(t, prediction, rouge_types, use_stemmer) for t in targets]
  best = {}
  for rouge_type in rouge_types:
    fmeasures = [s[rouge_type][2] for s in scores]
    best[rouge_type] = scores[fmeasures.index(max(fmeasures))][rouge_type]
  return best


def rouge(predictions: Sequence[str], targets: Sequence[str | Sequence[str]],
          rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL", "rougeLsum"),
          use_stemmer: bool = False) -> dict[str, float]:
  """Mean ROUGE precision/recall/F over prediction-target pairs.

  Args:
    predictions: N predicted texts.
    targets: N targets; each a string or a list of strings (multi-reference: the target
      with the best F per rouge type counts).
    rouge_types: any of 'rouge1'..'rouge9', 'rougeL', 'rougeLsum' (sentences separated by
      newlines).
    use_stemmer: Porter-stem tokens longer than 3 characters.

  Returns:
    {"<type>_precision": float, "<type>_recall": float, "<type>_fmeasure": float} for each
    type, each the plain mean over the N pairs (values in [0, 1]).
  """
  _check_types(rouge_types)
  if isinstance(predictions, str) or isinstance(targets, str):
    raise ValueError("predictions and targets must be lists, not single strings.")
  if len(predictions) != len(targets):
    raise ValueError(f"predictions and targets must have the same length, got "
                     f"{len(predictions)} and {len(targets)}.")
  if not predictions:
    raise ValueError("predictions is empty.")
  sums = {t: [0.0, 0.0, 0.0] for t in rouge_types}
  for prediction, target in zip(predictions, targets):
    if isinstance(target, str):
      scores = rouge_pair(target, prediction, rouge_types, use_stemmer)
    else:
      scores = rouge_multi(list(target), prediction, rouge_types, use_stemmer)
    for rouge_type, values in scores.items():
      for k in range(3):
        sums[rouge_type][k] += values[k]
  n = len(predictions)
  out = {}
  for rouge_type, (p, r, f) in sums.items():
    out[f"{rouge_type}_precision"] = p / n
    out[f"{rouge_type}_recall"] = r / n
    out[f"{rouge_type}_fmeasure"] = f / n
  return out
