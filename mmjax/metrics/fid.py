"""Fréchet Inception Distance (pytorch-fid's formula) and a streaming statistics accumulator.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). pytorch-fid takes
`scipy.linalg.sqrtm(S1 @ S2)`, a non-symmetric square root that is slow and can turn complex
or non-finite. The eigenvalues of S1 S2 equal those of the symmetric PSD matrix F^T S1 F for
any factor F F^T = S2, so tr sqrt(S1 S2) = sum_i sqrt(lambda_i(F^T S1 F)): a Cholesky (or,
for a singular S2, an `eigh`) and one symmetric eigenvalue solve, in float64 on the host.
Eigenvalues below eigh's rounding noise (negative ones included) are set to zero, which is
exact for singular covariances (N < D). float32 eigenvalues move FID by ~0.1, hence float64.

`FIDStats` accumulates count, sum and sum of outer products of features batch by batch on
device (under jit), merges across devices (`psum`) and hosts (`merge`, `sum_over_hosts`),
and yields the float64 mean and covariance on the host.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _clip_eigvals(eigvals: np.ndarray) -> np.ndarray:
  # Eigenvalues below the rounding noise of eigh (negative ones included) are zero in exact
  # arithmetic for singular covariances; left alone, sqrt would inflate 1e-16 noise to 1e-8.
  noise = eigvals.shape[0] * np.finfo(np.float64).eps * max(np.max(np.abs(eigvals)), 0.0)
  return np.where(eigvals > noise, eigvals, 0.0)


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr sqrt(sigma1 @ sigma2) for symmetric PSD [D, D] matrices, in float64 on the host.

  The eigenvalues of sigma1 @ sigma2 are those of the symmetric PSD matrix F^T sigma1 F
  for any factor F F^T = sigma2. F is the Cholesky factor when sigma2 is positive
  definite (one Cholesky + one symmetric eigenvalue solve); for a singular sigma2 (e.g.
  N <= D samples) F = V diag(sqrt(w)) from `eigh`, keeping only eigenvalues above
  rounding noise, which also shrinks the final eigenvalue problem to the rank of sigma2.
  """
  sigma1 = np.asarray(sigma1, np.float64)
  sigma2 = np.asarray(sigma2, np.float64)
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  try:
    factor = np.linalg.cholesky(sigma2)
  except np.linalg.LinAlgError:
    eigvals, eigvecs = np.linalg.eigh(sigma2)
    eigvals = _clip_eigvals(eigvals)
    keep = eigvals > 0
    factor = eigvecs[:, keep] * np.sqrt(eigvals[keep])
  if factor.shape[1] == 0:
    return 0.0
  middle = factor.T @ sigma1 @ factor
  eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
  return float(np.sum(np.sqrt(_clip_eigvals(eigvals))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

  Computed in float64 on the host (not traceable under jit by design).

  Args:
    mu1, mu2: [D] means.
    sigma1, sigma2: [D, D] covariances.

  Returns:
    The distance, a Python float (pytorch-fid's FID when given Inception pool statistics).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must both have shape [D], got {mu1.shape} and {mu2.shape}.")
  dim = mu1.shape[0]
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.shape != (dim, dim):
      raise ValueError(f"{name} must have shape [D, D]=[{dim}, {dim}], got {sigma.shape}.")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def mean_and_covariance(features) -> tuple[np.ndarray, np.ndarray]:
  """float64 mean [D] and covariance [D, D] of features [N, D] (np.cov, rowvar=False)."""
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must have shape [N, D] with N >= 2, got {features.shape}.")
  dim = features.shape[1]
  # np.cov makes its own float64 copy; converting first would hold two.
  return (features.mean(axis=0, dtype=np.float64),
          np.cov(features, rowvar=False).astype(np.float64).reshape(dim, dim))


def fid_from_features(features1, features2) -> float:
  """FID between two feature sets [N1, D] and [N2, D] (e.g. Inception pool features)."""
  mu1, sigma1 = mean_and_covariance(features1)
  mu2, sigma2 = mean_and_covariance(features2)
  return frechet_distance(mu1, sigma1, mu2, sigma2)


def _two_sum(a, b):
  """a + b as (hi, lo) with hi + lo exact (Knuth's TwoSum)."""
  hi = a + b
  b_virtual = hi - a
  lo = (a - (hi - b_virtual)) + (b - b_virtual)
  return hi, lo


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FIDStats:
  """Streaming first and second moments of features, as a pytree.

  Sums are kept as unevaluated pairs hi + lo (compensated summation) so that accumulating
  50k samples in float32 loses no more than one float32 rounding per batch; when x64 is
  enabled the arrays are float64 and lo stays ~0.

  Attributes:
    count: [] int32 number of samples.
    sum_hi, sum_lo: [D] sum of features.
    outer_hi, outer_lo: [D, D] sum of outer products x x^T.
  """
  count: jax.Array
  sum_hi: jax.Array
  sum_lo: jax.Array
  outer_hi: jax.Array
  outer_lo: jax.Array

  @classmethod
  def zeros(cls, dim: int, dtype=None) -> FIDStats:
    """Empty statistics for D=dim features (float64 if x64 is enabled, else float32)."""
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    return cls(count=jnp.zeros((), jnp.int32),
               sum_hi=jnp.zeros((dim,), dtype), sum_lo=jnp.zeros((dim,), dtype),
               outer_hi=jnp.zeros((dim, dim), dtype), outer_lo=jnp.zeros((dim, dim), dtype))

  @property
  def dim(self) -> int:
    return self.sum_hi.shape[-1]

  def update(self, features: jax.Array, mask: jax.Array | None = None) -> FIDStats:
    """Adds a batch of features [B, D]; `mask` [B] (bool) drops padding rows."""
    chex.assert_rank(features, 2)
    if features.shape[1] != self.dim:
      raise ValueError(f"features must have shape [B, {self.dim}], got {features.shape}.")
    dtype = self.sum_hi.dtype
    features = features.astype(dtype)
    if mask is None:
      count = features.shape[0]
    else:
      chex.assert_shape(mask, (features.shape[0],))
      features = jnp.where(mask[:, None], features, 0)
      count = jnp.sum(mask, dtype=jnp.int32)
    batch_sum = jnp.sum(features, axis=0)
    batch_outer = jnp.einsum("bi,bj->ij", features, features,
                             precision=jax.lax.Precision.HIGHEST)
    return self._add(count, batch_sum, jnp.zeros_like(batch_sum), batch_outer,
                     jnp.zeros_like(batch_outer))

  def _add(self, count, sum_hi, sum_lo, outer_hi, outer_lo) -> FIDStats:
    new_sum_hi, sum_err = _two_sum(self.sum_hi, sum_hi)
    new_outer_hi, outer_err = _two_sum(self.outer_hi, outer_hi)
    return FIDStats(count=self.count + count,
                    sum_hi=new_sum_hi, sum_lo=self.sum_lo + sum_lo + sum_err,
                    outer_hi=new_outer_hi, outer_lo=self.outer_lo + outer_lo + outer_err)

  def merge(self, other: FIDStats) -> FIDStats:
    """Statistics of the union of both sample sets (e.g. from two hosts)."""
    return self._add(other.count, other.sum_hi, other.sum_lo, other.outer_hi, other.outer_lo)

  def psum(self, axis_name) -> FIDStats:
    """Sums the statistics over a mapped axis (inside shard_map/pmap)."""
    return jax.tree.map(lambda x: jax.lax.psum(x, axis_name), self)

  def sum_over_hosts(self) -> FIDStats:
    """Statistics summed over all JAX processes (hosts); a no-op with one process.

    Call outside jit on every host with its host-local statistics (e.g. after `psum` over
    its local devices); every host gets the total.
    """
    if jax.process_count() == 1:
      return self
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    gathered = multihost_utils.process_allgather(self)  # leading axis: process
    total = jax.tree.map(lambda x: x[0], gathered)
    for i in range(1, jax.process_count()):
      total = total.merge(jax.tree.map(lambda x, i=i: x[i], gathered))
    return total

  def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean [D] and unbiased covariance [D, D] on the host (as np.cov)."""
    count = int(np.asarray(jax.device_get(self.count)))
    if count < 2:
      raise ValueError(f"FIDStats needs at least 2 samples for a covariance, got {count}.")
    total = (np.asarray(jax.device_get(self.sum_hi), np.float64)
             + np.asarray(jax.device_get(self.sum_lo), np.float64))
    outer = (np.asarray(jax.device_get(self.outer_hi), np.float64)
             + np.asarray(jax.device_get(self.outer_lo), np.float64))
    mean = total / count
    covariance = (outer - count * np.outer(mean, mean)) / (count - 1)
    return mean, (covariance + covariance.T) / 2


def fid_from_stats(stats1: FIDStats, stats2: FIDStats) -> float:
  """FID between two accumulated feature sets."""
  mu1, sigma1 = stats1.mean_and_covariance()
  mu2, sigma2 = stats2.mean_and_covariance()
  return frechet_distance(mu1, sigma1, mu2, sigma2)
