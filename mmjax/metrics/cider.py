"""CIDEr-D exactly as pycocoevalcap's `Cider` scorer computes it (host-side).

Text must already be tokenised (pycocoevalcap runs its PTB tokenizer, which needs Java,
before scoring; here tokens are whitespace-separated). For n = 1..4, each sentence becomes
a tf-idf vector whose idf comes from the references of the scored set itself (so the
score is corpus-dependent: a single image scores 0, as log(1) - log(df=1) = 0). Per
reference: sum over hypothesis n-grams of min(h, r) * r (the "-D" clipping) / (|h| |r|),
times a Gaussian length penalty exp(-delta^2 / (2 * 6^2)); averaged over n and over the
references, times 10. As in pycocoevalcap, the "length" in the penalty counts bigrams.
"""
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def _ngram_counts(sentence: str, max_order: int) -> dict:
  words = sentence.split()
  counts = defaultdict(int)
  for k in range(1, max_order + 1):
    for i in range(len(words) - k + 1):
      counts[tuple(words[i:i + k])] += 1
  return counts


def cider_d_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   max_order: int = 4, sigma: float = 6.0) -> np.ndarray:
  """Per-hypothesis CIDEr-D scores [N] (float64).

  Args:
    hypotheses: N tokenised hypothesis strings (one per image).
    references: N lists of tokenised reference strings (at least one each).
    max_order: largest n-gram order.
    sigma: standard deviation of the length penalty.

  Returns:
    [N] CIDEr-D of each hypothesis; their mean is the corpus score.
  """
  if isinstance(hypotheses, str) or isinstance(references, str):
    raise ValueError("hypotheses must be a list of strings and references a list of lists.")
  if len(hypotheses) != len(references):
    raise ValueError(f"references must hold one list per hypothesis: got {len(hypotheses)} "
                     f"hypotheses and {len(references)} reference lists.")
  if not hypotheses:
    raise ValueError("hypotheses is empty.")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or len(refs) == 0:
      raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}.")

  hyp_counts = [_ngram_counts(h, max_order) for h in hypotheses]
  ref_counts = [[_ngram_counts(r, max_order) for r in refs] for refs in references]
  document_frequency = defaultdict(float)
  for refs in ref_counts:
    for ngram in set(ngram for ref in refs for ngram in ref):
      document_frequency[ngram] += 1
  log_n_images = np.log(float(len(ref_counts)))

  def tfidf(counts):
    vec = [defaultdict(float) for _ in range(max_order)]
    norm = [0.0] * max_order
    length = 0
    for ngram, term_freq in counts.items():
      df = np.log(max(1.0, document_frequency[ngram]))
      n = len(ngram) - 1
      vec[n][ngram] = float(term_freq) * (log_n_images - df)
      norm[n] += pow(vec[n][ngram], 2)
      if n == 1:
        length += term_freq
    return vec, [np.sqrt(x) for x in norm], length

  def similarity(hyp, ref):
    (vec_hyp, norm_hyp, length_hyp), (vec_ref, norm_ref, length_ref) = hyp, ref
    delta = float(length_hyp - length_ref)
    val = np.array([0.0] * max_order)
    for n in range(max_order):
      for ngram in vec_hyp[n]:
        val[n] += min(vec_hyp[n][ngram], vec_ref[n][ngram]) * vec_ref[n][ngram]
      if norm_hyp[n] != 0 and norm_ref[n] != 0:
        val[n] /= norm_hyp[n] * norm_ref[n]
      val[n] *= np.e**(-(delta**2) / (2 * sigma**2))
    return val

  scores = []
  for hyp, refs in zip(hyp_counts, ref_counts):
    hyp_vec = tfidf(hyp)
    score = np.array([0.0] * max_order)
    for ref in refs:
      score += similarity(hyp_vec, tfidf(ref))
    score_avg = np.mean(score)
    score_avg /= len(refs)
    score_avg *= 10.0
    scores.append(score_avg)
  return np.array(scores)


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Corpus CIDEr-D: the mean of `cider_d_scores` (pycocoevalcap's Cider().compute_score)."""
  return float(np.mean(cider_d_scores(hypotheses, references)))
