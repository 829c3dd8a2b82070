"""FID against pytorch-fid's scipy.linalg.sqrtm formula; FIDStats against np.cov."""
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from mmjax import metrics


def pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance (sqrtm of the non-symmetric product)."""
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _features(rng, n, dim, shift=0.0):
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  return rng.normal(size=(n, dim)) @ mixing + shift + rng.normal(size=dim)


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None)
@hypothesis.given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 24),
                  extra=st.integers(2, 200), shift=st.floats(0.0, 3.0))
def test_matches_pytorch_fid_formula(seed, dim, extra, shift):
  rng = np.random.default_rng(seed)
  feats1 = _features(rng, dim + extra, dim)
  feats2 = _features(rng, dim + extra, dim, shift)
  mu1, sigma1 = feats1.mean(0), np.cov(feats1, rowvar=False).reshape(dim, dim)
  mu2, sigma2 = feats2.mean(0), np.cov(feats2, rowvar=False).reshape(dim, dim)
  want = pytorch_fid_reference(mu1, sigma1, mu2, sigma2)
  got = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  # The value is a difference of traces, so compare relative to their scale as well.
  scale = np.trace(sigma1) + np.trace(sigma2) + (mu1 - mu2) @ (mu1 - mu2)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * scale)
  np.testing.assert_allclose(metrics.fid_from_features(feats1, feats2), want, rtol=1e-6,
                             atol=1e-9 * scale)


def test_fid_of_a_set_with_itself_is_zero_even_when_singular():
  rng = np.random.default_rng(0)
  for n, dim in ((500, 32), (20, 64)):  # N < D: rank-deficient covariance
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    assert abs(metrics.fid_from_features(feats, feats)) < 1e-8 * dim


def test_singular_covariances_match_analytic_value():
  # Both covariances are rank-deficient (N < D); tr sqrt(S1 S2) is known in closed form
  # when S1 and S2 share eigenvectors: sum_i sqrt(a_i b_i).
  rng = np.random.default_rng(1)
  dim = 40
  basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  a = np.concatenate([rng.uniform(0.5, 2, 10), np.zeros(dim - 10)])
  b = np.concatenate([rng.uniform(0.5, 2, 15), np.zeros(dim - 15)])
  sigma1, sigma2 = (basis * a) @ basis.T, (basis * b) @ basis.T
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  want = (mu1 - mu2) @ (mu1 - mu2) + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
  np.testing.assert_allclose(metrics.frechet_distance(mu1, sigma1, mu2, sigma2), want,
                             rtol=1e-9)


def test_fid_stats_streaming_matches_np_cov_in_float32():
  rng = np.random.default_rng(2)
  feats = (rng.normal(size=(4000, 16)) * 0.5 + 2.0).astype(np.float32)
  update = jax.jit(lambda stats, batch, mask: stats.update(batch, mask))
  stats = metrics.FIDStats.zeros(16)
  batch = 64
  for start in range(0, len(feats), batch):
    chunk = feats[start:start + batch]
    mask = np.arange(batch) < len(chunk)
    chunk = np.pad(chunk, ((0, batch - len(chunk)), (0, 0)), constant_values=7.0)
    stats = update(stats, chunk, mask)
  assert int(stats.count) == 4000
  mean, cov = stats.mean_and_covariance()
  np.testing.assert_allclose(mean, feats.astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(cov, np.cov(feats.astype(np.float64), rowvar=False),
                             rtol=1e-5, atol=1e-6)


def test_fid_stats_merge_and_psum_across_devices():
  rng = np.random.default_rng(3)
  n_dev = jax.device_count()
  feats = rng.normal(size=(n_dev * 32, 8)).astype(np.float32)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  P = jax.sharding.PartitionSpec

  def local(batch):
    return metrics.FIDStats.zeros(8).update(batch).psum("data")

  stats = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P()))(feats)
  with jax.enable_x64(True):
    merged = (metrics.FIDStats.zeros(8).update(jnp.asarray(feats[:100]))
              .merge(metrics.FIDStats.zeros(8).update(jnp.asarray(feats[100:]))))
    assert merged.sum_hi.dtype == jnp.float64
  want_mean, want_cov = feats.astype(np.float64).mean(0), np.cov(feats, rowvar=False)
  for s in (stats, merged):
    assert int(s.count) == len(feats)
    mean, cov = s.mean_and_covariance()
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-5, atol=1e-6)
  other = rng.normal(size=(300, 8)) + 0.3
  np.testing.assert_allclose(
      metrics.fid_from_stats(merged, metrics.FIDStats.zeros(8).update(jnp.asarray(other,
                                                                                  jnp.float32))),
      metrics.fid_from_features(feats, other.astype(np.float32)), rtol=1e-5)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="sigma2"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
  with pytest.raises(ValueError, match="features"):
    metrics.fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"\[B, 4\]"):
    metrics.FIDStats.zeros(4).update(jnp.zeros((2, 3)))
