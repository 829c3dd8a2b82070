"""Gaussian targets for coordinate-bin tokens against a numpy loop, and the closed forms they
must satisfy: one-hot at sigma 0, q's entropy at the minimiser p = q, the gradient p - q."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import caption_loss
from mmjax.losses.coordinate_tokens import gaussian_bin_targets, token_nll

PAD, FIRST_BIN, NUM_BINS, VOCAB = 0, 7, 9, 16   # ids 7..15 are bins 0..8


def naive_token_nll(logits, tokens, sigma):
  """float64 loop: bin targets k get q_j = exp(-(j-k)^2 / 2 sigma^2) / Z over the bins, words
  the one-hot target; nll = -sum_v q_v log softmax(logits)_v."""
  logits, tokens = np.asarray(logits, np.float64), np.asarray(tokens)
  out = np.zeros((tokens.shape[0], tokens.shape[1] - 1))
  for b in range(tokens.shape[0]):
    for t in range(1, tokens.shape[1]):
      row = logits[b, t - 1]
      log_p = row - (np.log(np.exp(row - row.max()).sum()) + row.max())
      target = np.zeros(VOCAB)
      k = tokens[b, t] - FIRST_BIN
      if sigma > 0 and 0 <= k < NUM_BINS:
        for j in range(NUM_BINS):
          target[FIRST_BIN + j] = np.exp(-(j - k) ** 2 / (2 * sigma ** 2))
        target /= target.sum()
      else:
        target[tokens[b, t]] = 1.0
      out[b, t - 1] = -(target * log_p).sum()
  return out


def _example(seed=0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(3, 7, VOCAB)) * 2).astype(np.float32)
  tokens = rng.integers(3, VOCAB, size=(3, 7))       # words and bins mixed, bins 0 and 8 too
  tokens[0, 1:3] = [FIRST_BIN, FIRST_BIN + NUM_BINS - 1]
  tokens[1, 5:] = PAD
  return logits, tokens


@pytest.mark.parametrize("sigma", [0.0, 0.7, 1.5, 4.0])
def test_matches_numpy_loop(sigma):
  logits, tokens = _example()
  np.testing.assert_allclose(token_nll(logits, tokens, FIRST_BIN, NUM_BINS, sigma),
                             naive_token_nll(logits, tokens, sigma), rtol=1e-5, atol=1e-6)


def test_soft_targets_change_only_bin_positions():
  logits, tokens = _example(1)
  plain = np.asarray(token_nll(logits, tokens))
  soft = np.asarray(token_nll(logits, tokens, FIRST_BIN, NUM_BINS, 1.0))
  is_bin = (tokens[:, 1:] >= FIRST_BIN) & (tokens[:, 1:] < FIRST_BIN + NUM_BINS)
  assert is_bin.any() and (~is_bin).any()
  np.testing.assert_array_equal(soft[~is_bin], plain[~is_bin])
  assert np.all(np.abs(soft[is_bin] - plain[is_bin]) > 1e-3)


def test_minimum_is_the_target_entropy_and_decodes_to_the_true_bin():
  """With logits = log q over the bins (-inf-like elsewhere), the loss is H(q), the gradient
  is 0, and argmax is the true bin, at the edges too."""
  sigma = 1.3
  for k in (0, 4, NUM_BINS - 1):
    q = np.asarray(gaussian_bin_targets(jnp.array(k), NUM_BINS, sigma), np.float64)
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-6)
    assert int(np.argmax(q)) == k
    logits = np.full((1, 2, VOCAB), -30.0, np.float32)
    logits[0, 0, FIRST_BIN:] = np.log(q)
    tokens = np.array([[1, FIRST_BIN + k]])
    loss = lambda x: token_nll(x, tokens, FIRST_BIN, NUM_BINS, sigma)[0, 0]
    np.testing.assert_allclose(loss(jnp.asarray(logits)), -(q * np.log(q)).sum(), rtol=1e-4)
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(logits))[0, 0], 0.0, atol=1e-5)


def test_gradient_is_softmax_minus_target():
  logits, tokens = _example(2)
  sigma = 2.0
  grad = np.asarray(jax.grad(lambda x: token_nll(x, tokens, FIRST_BIN, NUM_BINS, sigma).sum())(
      jnp.asarray(logits)))
  probs = np.exp(logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  target = np.eye(VOCAB)[tokens[:, 1:]]
  k = tokens[:, 1:] - FIRST_BIN
  is_bin = (k >= 0) & (k < NUM_BINS)
  j = np.arange(NUM_BINS)
  gauss = np.exp(-(j - np.clip(k, 0, NUM_BINS - 1)[..., None]) ** 2 / (2 * sigma ** 2))
  target[..., FIRST_BIN:] = np.where(is_bin[..., None], gauss / gauss.sum(-1, keepdims=True),
                                     target[..., FIRST_BIN:])
  np.testing.assert_allclose(grad[:, :-1], probs - target, atol=1e-5)


def test_caption_loss_passes_the_bins_through():
  logits, tokens = _example(3)
  prompt_mask = np.arange(7)[None] < np.array([[2], [1], [3]])
  counted = (tokens[:, 1:] != PAD) & ~prompt_mask[:, 1:]
  expected = (naive_token_nll(logits, tokens, 1.5) * counted).sum() / counted.sum()
  np.testing.assert_allclose(caption_loss(logits, tokens, PAD, prompt_mask, FIRST_BIN, NUM_BINS,
                                          1.5), expected, rtol=1e-5)


def test_bad_settings_raise():
  logits, tokens = _example()
  with pytest.raises(ValueError, match="bin_sigma must be >= 0"):
    token_nll(logits, tokens, FIRST_BIN, NUM_BINS, -1.0)
  with pytest.raises(ValueError, match="bins inside the vocabulary"):
    token_nll(logits, tokens, FIRST_BIN + 1, NUM_BINS, 1.0)
  with pytest.raises(ValueError, match="first_bin and num_bins"):
    token_nll(logits, tokens, None, NUM_BINS, 1.0)
  with pytest.raises(ValueError, match="bin_sigma must be > 0"):
    gaussian_bin_targets(jnp.array(1), NUM_BINS, 0.0)
