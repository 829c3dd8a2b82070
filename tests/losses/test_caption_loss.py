"""caption_loss against a naive numpy loop over (row, target position): masked next-token
cross-entropy, padding and prompt tokens excluded, mean over the counted targets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import caption_loss

PAD = 0


def naive_caption_loss(logits, tokens, pad_id, prompt_mask=None):
  """Mean over (b, t >= 1) with tokens[b, t] != pad and not prompt of -log softmax(logits[b, t-1])
  at tokens[b, t], in float64; 0 when nothing counts."""
  logits, tokens = np.asarray(logits, np.float64), np.asarray(tokens)
  total, count = 0.0, 0
  for b in range(tokens.shape[0]):
    for t in range(1, tokens.shape[1]):
      if tokens[b, t] == pad_id or (prompt_mask is not None and prompt_mask[b, t]):
        continue
      row = logits[b, t - 1]
      log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
      total += log_z - row[tokens[b, t]]
      count += 1
  return total / count if count else 0.0


def _example(seed=0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(4, 8, 11)) * 3).astype(np.float32)
  tokens = rng.integers(3, 11, size=(4, 8))
  tokens[0, 5:] = PAD
  tokens[2, 2:] = PAD
  # Ragged prompts: BOS + 0..3 given tokens per row.
  prompt_mask = np.arange(8)[None, :] < np.array([[1], [3], [2], [4]])
  return logits, tokens, prompt_mask


def test_matches_naive_loop_with_padding_and_prompt():
  logits, tokens, prompt_mask = _example()
  np.testing.assert_allclose(caption_loss(logits, tokens, PAD),
                             naive_caption_loss(logits, tokens, PAD), rtol=1e-5)
  np.testing.assert_allclose(caption_loss(logits, tokens, PAD, prompt_mask),
                             naive_caption_loss(logits, tokens, PAD, prompt_mask), rtol=1e-5)
  # The prompt changes which targets count (else the two checks above could not tell).
  assert abs(naive_caption_loss(logits, tokens, PAD, prompt_mask)
             - naive_caption_loss(logits, tokens, PAD)) > 1e-2


def test_gradient_is_zero_exactly_at_excluded_positions():
  """d loss / d logits[b, t] is softmax - onehot(target) over the count of targets where
  target t + 1 counts, and zero elsewhere (padding, prompt, the last position)."""
  logits, tokens, prompt_mask = _example(1)
  grad = np.asarray(jax.grad(caption_loss)(jnp.asarray(logits), tokens, PAD, prompt_mask))
  counted = (tokens[:, 1:] != PAD) & ~prompt_mask[:, 1:]
  probs = np.exp(logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected = probs - np.eye(11)[tokens[:, 1:]]
  expected = np.where(counted[..., None], expected, 0.0) / counted.sum()
  np.testing.assert_allclose(grad[:, :-1], expected, atol=1e-6)
  np.testing.assert_array_equal(grad[:, -1], 0.0)


def test_nothing_counted_gives_zero():
  logits, tokens, _ = _example(2)
  assert float(caption_loss(logits, tokens, PAD, np.ones(tokens.shape, bool))) == 0.0


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="logits must be"):
    caption_loss(jnp.zeros((3, 5, 4)), jnp.zeros((3, 6), jnp.int32))
  with pytest.raises(ValueError, match=r"prompt_mask must be bool \[B, L\]"):
    caption_loss(jnp.zeros((3, 5, 4)), jnp.zeros((3, 5), jnp.int32), 0,
                 jnp.zeros((3, 4), bool))
