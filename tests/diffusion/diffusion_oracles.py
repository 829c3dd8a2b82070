"""Closed-form denoisers and flows for Gaussian and Gaussian-mixture data (test oracles).

For x0 ~ N(mu, Sigma) and x_t = a x0 + s eps, E[x0 | x_t] = mu + a Sigma (a^2 Sigma + s^2 I)^-1
(x_t - a mu), and the probability-flow ODE from (a0, s0) to (a1, s1) is the affine map that
scales each eigen-direction of Sigma by sqrt((a1^2 l + s1^2) / (a0^2 l + s0^2)).

Also numpy transcriptions that never call mmjax: the samplers' published update rules, a grid
schedule from alphas_cumprod, and bilinear upsampling.
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


def bilinear_upsample_np(images, size):
  """Bilinear upsampling [B, h, w, C] -> [B, H, W, C] (half-pixel centres, edges clamped),
  one axis at a time in float64: what jax.image.resize does for H >= h, W >= w."""
  out = np.asarray(images, np.float64)
  for axis, new in ((1, size[0]), (2, size[1])):
    old = out.shape[axis]
    if new < old:
      raise ValueError(f"bilinear_upsample_np only upsamples, got {old} -> {new}")
    centre = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
    lo = np.floor(centre).astype(int)
    hi = np.minimum(lo + 1, old - 1)
    frac = (centre - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
    out = np.take(out, lo, axis) * (1 - frac) + np.take(out, hi, axis) * frac
  return out


def grid_alpha_sigma_np(alpha_bar, times):
  """(alpha [N], sigma [N]) at grid times k / T from diffusers' alphas_cumprod [T] (numpy)."""
  num_train = len(alpha_bar)
  index = np.round(np.asarray(times, np.float64) * num_train).astype(int)
  if not np.allclose(index / num_train, times, rtol=0, atol=1e-9):
    raise ValueError(f"times {times} are not on the grid k / {num_train}")
  table = np.concatenate([[1.0], np.asarray(alpha_bar, np.float64)])
  return np.sqrt(table[index]), np.sqrt(1.0 - table[index])


def naive_ode_sample(sampler, alphas, sigmas, x, x0_at):
  """The deterministic samplers step by step from their published update rules (numpy).

  alphas, sigmas: [N + 1] along the time grid (no repeated times); x: the state at index 0;
  x0_at(x, i): the x0 prediction at grid index i.
  """
  n = len(alphas) - 1
  if sampler in ("ddim", "euler"):  # diffusers DDIMScheduler.step, eta = 0
    for i in range(n):
      x0 = x0_at(x, i)
      eps = (x - alphas[i] * x0) / sigmas[i]
      x = alphas[i + 1] * x0 + sigmas[i + 1] * eps
    return x
  if sampler == "heun":  # k-diffusion sample_heun in VE coordinates x / alpha
    ve = sigmas / alphas
    x = x / alphas[0]
    for i in range(n):
      d = (x - x0_at(x * alphas[i], i)) / ve[i]
      if ve[i + 1] == 0:
        x = x + d * (ve[i + 1] - ve[i])
      else:
        x2 = x + d * (ve[i + 1] - ve[i])
        d2 = (x2 - x0_at(x2 * alphas[i + 1], i + 1)) / ve[i + 1]
        x = x + (d + d2) / 2 * (ve[i + 1] - ve[i])
    return x * alphas[n]
  # diffusers DPMSolverMultistepScheduler (dpmsolver++, midpoint), final_sigmas_type="zero".
  lam = np.log(alphas) - np.log(np.maximum(sigmas, 1e-300))
  max_order = {"dpmpp_2m": 2, "dpmpp_3m": 3}[sampler]
  history = []
  for i in range(n):
    m0 = x0_at(x, i)
    history = [m0] + history[:2]
    order = min(max_order, i + 1)
    if sigmas[i + 1] == 0 or (n < 15 and i == n - 1):
      order = 1
    if n < 15 and i == n - 2:
      order = min(order, 2)
    a_t, s_t, s_s = alphas[i + 1], sigmas[i + 1], sigmas[i]
    if order == 1:
      x = s_t / s_s * x + a_t * (1 - s_t * alphas[i] / (a_t * s_s)) * m0
      continue
    h = lam[i + 1] - lam[i]
    h0 = lam[i] - lam[i - 1]
    r0 = h0 / h
    m1 = history[1]
    d1_0 = (m0 - m1) / r0
    if order == 2:
      x = s_t / s_s * x - a_t * np.expm1(-h) * m0 - 0.5 * a_t * np.expm1(-h) * d1_0
      continue
    h1 = lam[i - 1] - lam[i - 2]
    r1 = h1 / h
    d1_1 = (m1 - history[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    x = (s_t / s_s * x - a_t * np.expm1(-h) * m0 + a_t * (np.expm1(-h) / h + 1) * d1
         - a_t * ((np.expm1(-h) + h) / h ** 2 - 0.5) * d2)
  return x


def naive_stochastic_sample(sampler, alphas, sigmas, x, x0_at, noises, eta):
  """ddpm, ddim (eta > 0) and euler_ancestral step by step (numpy); noises[i] is the
  standard normal draw of step i."""
  alpha_bar = alphas ** 2
  for i in range(len(alphas) - 1):
    x0 = x0_at(x, i)
    if sampler == "ddpm":  # DDPM posterior q(x_prev | x_t, x0), "fixed_small" variance
      beta = 1 - alpha_bar[i] / alpha_bar[i + 1]
      mean = (np.sqrt(alpha_bar[i + 1]) * beta / (1 - alpha_bar[i]) * x0
              + np.sqrt(1 - beta) * (1 - alpha_bar[i + 1]) / (1 - alpha_bar[i]) * x)
      x = mean + np.sqrt(beta * (1 - alpha_bar[i + 1]) / (1 - alpha_bar[i])) * noises[i]
    elif sampler == "ddim":  # DDIM eq. 12 with sigma_eta of eq. 16
      std = eta * np.sqrt((1 - alpha_bar[i + 1]) / (1 - alpha_bar[i])
                          * (1 - alpha_bar[i] / alpha_bar[i + 1]))
      eps = (x - alphas[i] * x0) / sigmas[i]
      x = (alphas[i + 1] * x0 + np.sqrt(1 - alpha_bar[i + 1] - std ** 2) * eps
           + std * noises[i])
    else:  # k-diffusion sample_euler_ancestral (get_ancestral_step) in x / alpha
      ve, ve_next = sigmas[i] / alphas[i], sigmas[i + 1] / alphas[i + 1]
      up = min(ve_next, eta * np.sqrt(ve_next ** 2 * (ve ** 2 - ve_next ** 2) / ve ** 2))
      down = np.sqrt(ve_next ** 2 - up ** 2)
      x_ve = x / alphas[i]
      x_ve = x_ve + (x_ve - x0) / ve * (down - ve) + up * noises[i]
      x = alphas[i + 1] * x_ve
  return x
