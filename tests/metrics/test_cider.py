"""CIDEr-D against pycocoevalcap's Cider scorer (no Java: text is pre-tokenised)."""
import hypothesis
from hypothesis import strategies as st
import numpy as np
from pycocoevalcap.cider.cider import Cider
import pytest

from mmjax import metrics
from mmjax.metrics.cider import cider_d_scores

WORDS = ["a", "man", "riding", "a", "horse", "on", "the", "beach", "dog", "with", "red",
         "ball", "two", "people", "standing", "near", "water"]
caption = st.lists(st.sampled_from(WORDS), min_size=0, max_size=10).map(" ".join)
# pycocoevalcap fails on a corpus whose references are all empty, so references have words.
reference = st.lists(st.sampled_from(WORDS), min_size=1, max_size=10).map(" ".join)


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None)
@hypothesis.given(data=st.lists(st.tuples(caption, st.lists(reference, min_size=1, max_size=5)),
                                min_size=1, max_size=8))
def test_cider_d_equals_pycocoevalcap(data):
  hyps = [h for h, _ in data]
  refs = [r for _, r in data]
  gts = {i: r for i, r in enumerate(refs)}
  res = {i: [h] for i, h in enumerate(hyps)}
  want_mean, want_scores = Cider().compute_score(gts, res)
  np.testing.assert_array_equal(cider_d_scores(hyps, refs), want_scores)
  assert metrics.cider_d(hyps, refs) == want_mean


def test_single_image_scores_zero_and_errors():
  assert metrics.cider_d(["a man riding a horse"], [["a man riding a horse"]]) == 0.0
  with pytest.raises(ValueError, match="non-empty"):
    metrics.cider_d(["a"], [[]])
  with pytest.raises(ValueError, match="one list per hypothesis"):
    metrics.cider_d(["a", "b"], [["a"]])
