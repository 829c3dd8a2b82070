"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np


def polynomial_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
  """k(x, y) = (x . y / D + 1)^3 for x [N, D], y [M, D] -> [N, M]."""
  dim = x.shape[-1]
  dots = jnp.einsum("nd,md->nm", x, y, precision=jax.lax.Precision.HIGHEST)
  return (dots / dim + 1) ** 3


def mmd2_unbiased(x: jax.Array, y: jax.Array) -> jax.Array:
  """Unbiased MMD^2 between samples x [m, D] and y [m, D] with the cubic kernel."""
  m = x.shape[0]
  k_xx = polynomial_kernel(x, x)
  k_yy = polynomial_kernel(y, y)
  k_xy = polynomial_kernel(x, y)
  sum_xx = jnp.sum(k_xx) - jnp.trace(k_xx)
  sum_yy = jnp.sum(k_yy) - jnp.trace(k_yy)
  return (sum_xx + sum_yy) / (m * (m - 1)) - 2 * jnp.sum(k_xy) / (m * m)


@jax.jit
def _subset_mmds(features1, features2, index1, index2):
  return jax.lax.map(lambda ij: mmd2_unbiased(features1[ij[0]], features2[ij[1]]),
                     (index1, index2))


def kid_subset_indices(n1: int, n2: int, subsets: int, subset_size: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """[subsets, subset_size] row indices into each set, drawn as torch-fidelity draws them.

  np.random.RandomState(seed).choice(n, subset_size, replace=False), alternately for the
  first and the second set, once per subset.
  """
  rng = np.random.RandomState(seed)
  index1, index2 = [], []
  for _ in range(subsets):
    index1.append(rng.choice(n1, subset_size, replace=False))
    index2.append(rng.choice(n2, subset_size, replace=False))
  return np.stack(index1).astype(np.int32), np.stack(index2).astype(np.int32)


def kid(features1: jax.Array, features2: jax.Array, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """Kernel Inception Distance (Binkowski et al. 2018).

  The unbiased MMD^2 with k(x, y) = (x.y/D + 1)^3 is computed on `subsets` random pairs of
  subsets of `subset_size` rows (without replacement within a subset; subsets drawn with
  `kid_subset_indices`), on device in the features' dtype (float64 under
  `jax.enable_x64`).

  Args:
    features1: [N1, D] features of the first set.
    features2: [N2, D] features of the second set.
    subsets: number of subset pairs.
    subset_size: rows per subset; must not exceed N1 or N2.
    seed: seed of the subset draw.

  Returns:
    (mean, std) over subsets of MMD^2 (std is the population std).
  """
  chex.assert_rank([features1, features2], 2)
  n1, dim = features1.shape
  n2 = features2.shape[0]
  if features2.shape[1] != dim:
    raise ValueError(f"features1 [N1, D] and features2 [N2, D] must share D, got "
                     f"{features1.shape} and {features2.shape}.")
  if subsets < 1 or subset_size < 2:
    raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}.")
  if subset_size > min(n1, n2):
    raise ValueError(f"subset_size={subset_size} exceeds the number of samples "
                     f"(N1={n1}, N2={n2}); pass a smaller subset_size.")
  index1, index2 = kid_subset_indices(n1, n2, subsets, subset_size, seed)
  features1, features2 = jnp.asarray(features1), jnp.asarray(features2)
  if not jnp.issubdtype(features1.dtype, jnp.floating):
    features1 = features1.astype(jnp.float32)
  features2 = features2.astype(features1.dtype)
  mmds = _subset_mmds(features1, features2, jnp.asarray(index1), jnp.asarray(index2))
  return jnp.mean(mmds), jnp.std(mmds)
