"""Closed-form denoisers and flows for Gaussian and Gaussian-mixture data (test oracles).

For x0 ~ N(mu, Sigma) and x_t = a x0 + s eps, E[x0 | x_t] = mu + a Sigma (a^2 Sigma + s^2 I)^-1
(x_t - a mu), and the probability-flow ODE from (a0, s0) to (a1, s1) is the affine map that
scales each eigen-direction of Sigma by sqrt((a1^2 l + s1^2) / (a0^2 l + s0^2)).
"""
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import diffusion


def random_gaussian(d=3, seed=0, eigenvalues=(0.05, 0.5, 2.0)):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  mu = rng.normal(size=d)
  return mu, q @ np.diag(eigenvalues[:d]) @ q.T


def gaussian_x0_np(x, a, s, mu, cov):
  """E[x0 | x_t = x] in numpy by a linear solve; x [B, d], a and s scalars."""
  d = mu.shape[-1]
  gain = a * cov @ np.linalg.inv(a ** 2 * cov + s ** 2 * np.eye(d))
  return mu + (x - a * mu) @ gain.T


def gaussian_denoiser(schedule, mu, cov, prediction="x0"):
  """denoise_fn(x [B, d], t [B], mean=None) -> output of type `prediction` (jax).

  Works in the eigenbasis of Sigma (elementwise gains, cheap to compile). The optional
  keyword `mean` [B, d] overrides mu (a "conditional" Gaussian)."""
  eigenvalues, basis = np.linalg.eigh(np.asarray(cov, np.float64))
  mu = jnp.asarray(mu)

  def denoise_fn(x, t, mean=None):
    a, s = schedule.alpha_sigma(t)
    a, s = a.astype(x.dtype)[:, None], s.astype(x.dtype)[:, None]
    lam, q = jnp.asarray(eigenvalues, x.dtype), jnp.asarray(basis, x.dtype)
    center = mu.astype(x.dtype) if mean is None else mean
    gain = a * lam / (a ** 2 * lam + s ** 2)  # [B, d]
    x0 = center + ((x - a * center) @ q * gain) @ q.T
    return diffusion.convert_output(x0, x, a, s, "x0", prediction)

  return denoise_fn


def mixture_denoiser(schedule, weights, means, variances, prediction="x0"):
  """Isotropic Gaussian mixture: E[x0|x_t] = sum_k p(k|x_t) E_k[x0|x_t], p(k|x_t) a softmax."""
  weights, means, variances = (jnp.asarray(v) for v in (weights, means, variances))
  d = means.shape[-1]

  def denoise_fn(x, t):
    a, s = schedule.alpha_sigma(t)
    a, s = a[:, None, None], s[:, None, None]  # [B, 1, 1]
    var_t = a ** 2 * variances[None, :, None] + s ** 2  # [B, K, 1]
    diff = x[:, None, :] - a * means[None]  # [B, K, d]
    log_p = jnp.log(weights) - 0.5 * jnp.sum(diff ** 2 / var_t + jnp.log(var_t), axis=-1)
    post = jax.nn.softmax(log_p, axis=-1)  # [B, K]
    x0_k = means[None] + a * variances[None, :, None] / var_t * diff
    x0 = jnp.einsum("bk,bkd->bd", post, x0_k)
    return diffusion.convert_output(x0, x, a[:, 0], s[:, 0], "x0", prediction)

  del d
  return denoise_fn


def exact_flow(mu, cov, a0, s0, a1, s1):
  """(M, b) with x1 = M x0 + b, the probability-flow ODE map between two noise levels."""
  lam, q = np.linalg.eigh(cov)
  m = q @ np.diag(np.sqrt((a1 ** 2 * lam + s1 ** 2) / (a0 ** 2 * lam + s0 ** 2))) @ q.T
  return m, a1 * mu - m @ (a0 * mu)


def affine_map(fn, d):
  """(A, b) of an affine fn: [B, d] -> [B, d], probed at 0 and the unit vectors."""
  probes = np.concatenate([np.zeros((1, d)), np.eye(d)])
  out = np.asarray(fn(jnp.asarray(probes)))
  return (out[1:] - out[0]).T, out[0]
