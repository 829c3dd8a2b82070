"""`from_left_padded` against a per-row numpy transcription, and its mask checks."""
import jax
import numpy as np
import pytest

from mmjax import decoding


def test_rows_move_to_the_front_in_order():
  rng = np.random.default_rng(0)
  batch, width = 6, 7
  lengths = np.array([7, 1, 3, 5, 2, 6])
  mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
  prompt = np.where(mask, rng.integers(3, 50, size=(batch, width)), 0)
  right, got_lengths = jax.jit(decoding.from_left_padded, static_argnums=2)(prompt, mask, 9)
  expected = np.full((batch, width), 9)
  for b in range(batch):
    tokens = prompt[b][mask[b]]
    expected[b, :len(tokens)] = tokens
  np.testing.assert_array_equal(right, expected)
  np.testing.assert_array_equal(got_lengths, lengths)


@pytest.mark.parametrize("row", [[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]])
def test_a_row_that_is_not_left_padded_is_named(row):
  mask = np.array([[0, 0, 1, 1], row])
  with pytest.raises(ValueError, match=r"attention_mask row 1 is \[.*\]: a left-padded row"):
    decoding.from_left_padded(np.ones((2, 4), np.int32), mask)
