"""Logits processors against numpy reference formulas."""
import numpy as np

import jax.numpy as jnp

from mmjax.decoding import processors

LOGITS = np.array([[2.0, -1.0, 0.5, 3.0, -2.0, 0.0],
                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], np.float32)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
  seen = np.array([[1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]], bool)
  got = processors.apply_repetition_penalty(jnp.asarray(LOGITS), jnp.asarray(seen), 2.0)
  expected = LOGITS.copy()
  for b, v in zip(*np.nonzero(seen)):
    expected[b, v] = LOGITS[b, v] / 2.0 if LOGITS[b, v] > 0 else LOGITS[b, v] * 2.0
  np.testing.assert_allclose(got, expected)


def test_mark_seen_ignores_invalid_entries():
  seen = processors.mark_seen(jnp.zeros((2, 6), bool), jnp.array([[1, 4], [5, 2]]),
                              jnp.array([[True, True], [True, False]]))
  np.testing.assert_array_equal(np.flatnonzero(seen[0]), [1, 4])
  np.testing.assert_array_equal(np.flatnonzero(seen[1]), [5])


def test_suppress_token_only_where_asked():
  got = processors.suppress_token(jnp.asarray(LOGITS), 3, jnp.array([True, False]))
  assert got[0, 3] == -np.inf and got[1, 3] == LOGITS[1, 3]
  np.testing.assert_array_equal(np.delete(np.asarray(got), 3, 1), np.delete(LOGITS, 3, 1))


def test_top_k_keeps_the_k_largest():
  got = np.asarray(processors.top_k_filter(jnp.asarray(LOGITS), 2))
  np.testing.assert_array_equal(np.isfinite(got[0]), [1, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(np.isfinite(got[1]), [0, 0, 0, 0, 1, 1])


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
  for p in (0.01, 0.3, 0.6, 0.9, 1.0):
    got = np.isfinite(np.asarray(processors.top_p_filter(jnp.asarray(LOGITS), p)))
    for row in range(2):
      probs = np.exp(LOGITS[row] - LOGITS[row].max())
      probs /= probs.sum()
      order = np.argsort(-probs)
      # Smallest prefix of the sorted tokens whose mass reaches p.
      size = int(np.searchsorted(np.cumsum(probs[order]), p - 1e-7) + 1)
      expected = np.zeros(6, bool)
      expected[order[:size]] = True
      np.testing.assert_array_equal(got[row], expected, err_msg=f"p={p} row={row}")
