"""BLEU against sacrebleu on randomised corpora (exact equality)."""
import hypothesis
from hypothesis import strategies as st
import pytest
import sacrebleu

from mmjax import metrics

# Small vocabulary so n-grams match often; punctuation, digits and entities exercise 13a.
WORDS = ["the", "The", "cat", "dog", "sat", "on", "mat", "a", "red", "3.5", "1,000", "-",
         "e-mail", "it's", "(big)", "end.", "x,y", "&amp;", "&quot;", "5-6", "!", "?"]
sentence = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)
SMOOTHS = ["exp", "floor", "add-k", "none"]


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
@hypothesis.given(
    data=st.lists(st.tuples(sentence, st.lists(sentence, min_size=1, max_size=4)),
                  min_size=1, max_size=6),
    smooth=st.sampled_from(SMOOTHS), lowercase=st.booleans(),
    tokenize=st.sampled_from(["13a", "none", "char"]))
def test_corpus_bleu_equals_sacrebleu(data, smooth, lowercase, tokenize):
  hyps = [h for h, _ in data]
  refs = [r for _, r in data]
  n_refs = max(len(r) for r in refs)
  streams = [[r[k] if k < len(r) else None for r in refs] for k in range(n_refs)]
  want = sacrebleu.corpus_bleu(hyps, streams, smooth_method=smooth, lowercase=lowercase,
                               tokenize=tokenize, force=True).score
  got = metrics.corpus_bleu(hyps, refs, smooth=smooth, lowercase=lowercase, tokenize=tokenize)
  assert got == want


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
@hypothesis.given(hyp=sentence, refs=st.lists(sentence, min_size=1, max_size=3),
                  smooth=st.sampled_from(SMOOTHS),
                  smooth_value=st.sampled_from([None, 0.01, 0.5, 2]))
def test_sentence_bleu_equals_sacrebleu(hyp, refs, smooth, smooth_value):
  if smooth in ("exp", "none"):
    smooth_value = None
  want = sacrebleu.sentence_bleu(hyp, refs, smooth_method=smooth,
                                 smooth_value=smooth_value).score
  got = metrics.sentence_bleu(hyp, refs, smooth=smooth, smooth_value=smooth_value)
  assert got == want


def test_known_cases():
  # Short hypotheses score 0 in a corpus even with 'exp' (no 4-grams at all).
  assert metrics.corpus_bleu(["a cat"], [["a cat"]]) == 0.0
  assert metrics.sentence_bleu("a cat", ["a cat"]) == pytest.approx(100.0)
  # Brevity penalty: ties in distance to the references pick the shorter one.
  hyp = "the cat sat on the mat today"
  refs = ["the cat sat on the mat", "the cat sat on the mat today ok ok"]
  got = metrics.corpus_bleu([hyp], [refs])
  assert got == sacrebleu.corpus_bleu([hyp], [[refs[0]], [refs[1]]]).score


def test_bad_input_raises():
  with pytest.raises(ValueError, match="smooth"):
    metrics.corpus_bleu(["a"], [["a"]], smooth="bogus")
  with pytest.raises(ValueError, match="tokenize"):
    metrics.corpus_bleu(["a"], [["a"]], tokenize="intl")
  with pytest.raises(ValueError, match="one list per hypothesis"):
    metrics.corpus_bleu(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="list of strings"):
    metrics.corpus_bleu(["a"], ["a"])
