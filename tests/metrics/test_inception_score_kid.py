"""IS and KID against straightforward float64 numpy implementations of the originals."""
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import metrics


def reference_inception_score(logits, splits):
  """The improved-GAN code: softmax, consecutive splits, exp(mean KL), np.std."""
  preds = np.exp(logits - logits.max(1, keepdims=True))
  preds /= preds.sum(1, keepdims=True)
  scores = []
  for i in range(splits):
    part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


def reference_kid(f1, f2, subsets, subset_size, seed):
  """Unbiased MMD^2 written out with loops over the kernel sums (torch-fidelity's draw)."""
  rng = np.random.RandomState(seed)
  mmds = []
  for _ in range(subsets):
    x = f1[rng.choice(len(f1), subset_size, replace=False)]
    y = f2[rng.choice(len(f2), subset_size, replace=False)]
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m = subset_size
    mmds.append((k_xx.sum() - np.diag(k_xx).sum()) / (m * (m - 1))
                + (k_yy.sum() - np.diag(k_yy).sum()) / (m * (m - 1)) - 2 * k_xy.mean())
  return np.mean(mmds), np.std(mmds)


@hypothesis.settings(max_examples=100, deadline=None, derandomize=True, database=None)
@hypothesis.given(seed=st.integers(0, 2**32 - 1), splits=st.sampled_from([1, 3, 10]),
                  n=st.sampled_from([37, 60]), scale=st.floats(0.1, 5.0))
def test_inception_score_matches_reference(seed, splits, n, scale):
  # Few distinct shapes (each one compiles); n=37 leaves uneven consecutive splits.
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, 12)) * scale
  want = reference_inception_score(logits, splits)
  with jax.enable_x64(True):
    got = metrics.inception_score(jnp.asarray(logits, jnp.float64), splits=splits)
  np.testing.assert_allclose(float(got[0]), want[0], rtol=1e-9)
  np.testing.assert_allclose(float(got[1]), want[1], rtol=1e-6, atol=1e-12)


def test_inception_score_float32_and_bounds():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(500, 1008)) * 3
  want = reference_inception_score(logits, 10)
  got = metrics.inception_score(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(float(got[0]), want[0], rtol=1e-5)
  # A confident, uniformly spread classifier reaches IS = number of classes.
  one_hot = np.eye(20)[np.arange(400) % 20] * 1e4
  np.testing.assert_allclose(float(metrics.inception_score(one_hot, splits=4)[0]), 20,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="splits"):
    metrics.inception_score(jnp.zeros((5, 3)), splits=6)


@pytest.mark.parametrize("seed", range(4))
def test_kid_matches_reference_float64(seed):
  rng = np.random.default_rng(seed)
  f1 = rng.normal(size=(120, 16))
  f2 = rng.normal(size=(90, 16)) * 1.1 + 0.2 * seed
  want = reference_kid(f1, f2, subsets=7, subset_size=50, seed=seed)
  with jax.enable_x64(True):
    got = metrics.kid(jnp.asarray(f1), jnp.asarray(f2), subsets=7, subset_size=50, seed=seed)
    got = float(got[0]), float(got[1])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-12)


def test_kid_float32_and_errors():
  rng = np.random.default_rng(5)
  f1 = rng.normal(size=(200, 32)).astype(np.float32)
  f2 = (rng.normal(size=(200, 32)) + 0.5).astype(np.float32)
  want = reference_kid(f1.astype(np.float64), f2.astype(np.float64), 10, 100, 0)
  got = metrics.kid(f1, f2, subsets=10, subset_size=100)
  np.testing.assert_allclose(float(got[0]), want[0], rtol=1e-4)
  with pytest.raises(ValueError, match="subset_size"):
    metrics.kid(f1, f2, subset_size=1000)
