"""ROUGE and the Porter stemmer against rouge-score / nltk (exact equality)."""
import hypothesis
from hypothesis import strategies as st
from nltk.stem import porter
import pytest
from rouge_score import rouge_scorer

from mmjax import metrics
from mmjax.metrics.porter import porter_stem
from mmjax.metrics.rouge import rouge_pair

TYPES = ("rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum")
WORDS = ["The", "cats", "cat", "running", "runs", "ran", "a", "generalization", "happy",
         "happiness", "sky", "skies", "dying", "on", "mat", "it's", "U.S.", "42", "fox-trot",
         "\n", "\n", "relational", "conditional", "hopping", "agreed", "ponies", "caresses"]
text = st.lists(st.sampled_from(WORDS), min_size=0, max_size=14).map(" ".join)


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
@hypothesis.given(pairs=st.lists(st.tuples(text, st.lists(text, min_size=1, max_size=3)),
                                 min_size=1, max_size=4),
                  use_stemmer=st.booleans(), single=st.booleans())
def test_rouge_equals_rouge_score(pairs, use_stemmer, single):
  scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
  predictions = [p for p, _ in pairs]
  targets = [t[0] if single else t for _, t in pairs]
  sums = {}
  for prediction, target in zip(predictions, targets):
    ref = (scorer.score(target, prediction) if single
           else scorer.score_multi(target, prediction))
    for rouge_type, score in ref.items():
      mine = (rouge_pair(target, prediction, TYPES, use_stemmer)[rouge_type] if single
              else metrics.rouge_multi(target, prediction, TYPES, use_stemmer)[rouge_type])
      assert mine == (score.precision, score.recall, score.fmeasure)
      acc = sums.setdefault(rouge_type, [0.0, 0.0, 0.0])
      for k, v in enumerate((score.precision, score.recall, score.fmeasure)):
        acc[k] += v
  got = metrics.rouge(predictions, targets, TYPES, use_stemmer=use_stemmer)
  for rouge_type, (p, r, f) in sums.items():
    n = len(predictions)
    assert got[f"{rouge_type}_precision"] == p / n
    assert got[f"{rouge_type}_recall"] == r / n
    assert got[f"{rouge_type}_fmeasure"] == f / n


@hypothesis.settings(max_examples=500, deadline=None, derandomize=True, database=None)
@hypothesis.given(word=st.text(alphabet="aeiouybcdglmnrstwxz", min_size=1, max_size=12),
                  suffix=st.sampled_from(["", "ational", "izer", "alli", "fulli", "logi",
                                          "ies", "ied", "eed", "ing", "ed", "y", "ness",
                                          "ement", "ion", "ll", "e", "ate", "iviti"]))
def test_porter_stem_equals_nltk(word, suffix):
  assert porter_stem(word + suffix) == porter.PorterStemmer().stem(word + suffix)


def test_bad_input_raises():
  with pytest.raises(ValueError, match="rouge type"):
    metrics.rouge(["a"], ["a"], rouge_types=("rougeX",))
  with pytest.raises(ValueError, match="same length"):
    metrics.rouge(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="empty"):
    metrics.rouge(["a"], [[]])
