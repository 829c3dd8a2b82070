"""Classifier-free guidance, rescale, thresholding, img2img and a mixture test (cascades:
test_cascade.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion
import diffusion_oracles as oracles

D = 2


def _conditional_setup():
  schedule = diffusion.scaled_linear_schedule()
  mu, cov = oracles.random_gaussian(D, seed=0, eigenvalues=(0.2, 0.8))
  denoise = oracles.gaussian_denoiser(schedule, mu.astype(np.float32), cov.astype(np.float32),
                                      "eps")
  cond_mean = jnp.asarray([[2.0, -1.0]] * 4, jnp.float32)
  null_mean = jnp.zeros((D,), jnp.float32)  # the "empty prompt"
  x_T = jax.random.normal(jax.random.key(0), (4, D))
  return schedule, denoise, cond_mean, null_mean, x_T


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_scale_0_and_1_are_the_unconditional_and_conditional_samplers(batched):
  schedule, denoise, cond_mean, null_mean, x_T = _conditional_setup()
  kwargs = dict(sampler="dpmpp_2m", num_steps=10)

  @jax.jit
  def guided(scale):
    fn = diffusion.classifier_free_guidance(denoise, scale, uncond=dict(mean=null_mean),
                                            batched=batched)
    return diffusion.sample(fn, None, x_T, schedule, cond=dict(mean=cond_mean), **kwargs)

  cond = diffusion.sample(denoise, None, x_T, schedule, cond=dict(mean=cond_mean), **kwargs)
  uncond = diffusion.sample(denoise, None, x_T, schedule,
                            cond=dict(mean=jnp.broadcast_to(null_mean, cond_mean.shape)),
                            **kwargs)
  np.testing.assert_allclose(guided(jnp.float32(1.0)), cond, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guided(jnp.float32(0.0)), uncond, rtol=1e-5, atol=1e-5)
  # Guidance extrapolates away from the unconditional sample, linearly in the scale here
  # (the Gaussian denoiser is affine in its mean).
  np.testing.assert_allclose(guided(jnp.float32(3.0)), uncond + 3.0 * (cond - uncond),
                             rtol=1e-4, atol=1e-4)


def test_changing_scale_or_prompt_does_not_recompile():
  schedule, denoise, cond_mean, null_mean, x_T = _conditional_setup()
  traces = []

  @jax.jit
  def guided(key, x_T, scale, mean):
    traces.append(1)
    fn = diffusion.classifier_free_guidance(denoise, scale, uncond=dict(mean=null_mean),
                                            rescale=jnp.float32(0.5))
    return diffusion.sample(fn, key, x_T, schedule, sampler="ddpm", num_steps=8,
                            cond=dict(mean=mean))

  outs = [guided(jax.random.key(0), x_T, jnp.float32(s), cond_mean * m)
          for s, m in [(1.0, 1.0), (7.5, 1.0), (7.5, -2.0), (0.0, 3.0)]]
  assert len(traces) == 1 and guided._cache_size() == 1
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_per_example_guidance_scale():
  schedule, denoise, cond_mean, null_mean, x_T = _conditional_setup()
  scales = jnp.asarray([0.0, 1.0, 2.0, 5.0])
  t = jnp.full((4,), 0.5)
  guided = diffusion.classifier_free_guidance(denoise, scales, uncond=dict(mean=null_mean))
  out = guided(x_T, t, mean=cond_mean)
  for i, s in enumerate(np.asarray(scales)):
    single = diffusion.classifier_free_guidance(denoise, s, uncond=dict(mean=null_mean))
    np.testing.assert_allclose(out[i], single(x_T, t, mean=cond_mean)[i], rtol=1e-5, atol=1e-6)


def test_cfg_rejects_mismatched_uncond():
  _, denoise, cond_mean, _, x_T = _conditional_setup()
  guided = diffusion.classifier_free_guidance(denoise, 2.0, uncond=dict(other=jnp.zeros(2)))
  with pytest.raises(ValueError, match="subset"):
    guided(x_T, jnp.full((4,), 0.5), mean=cond_mean)


def test_guidance_rescale_matches_the_paper_formula():
  rng = np.random.default_rng(0)
  cond, guided = rng.normal(size=(3, 4, 5)), 3.0 * rng.normal(size=(3, 4, 5)) + 1.0
  phi = 0.7
  std_c = cond.reshape(3, -1).std(1)[:, None, None]
  std_g = guided.reshape(3, -1).std(1)[:, None, None]
  want = phi * guided * std_c / std_g + (1 - phi) * guided
  got = diffusion.rescale_guidance(jnp.asarray(guided, jnp.float32),
                                   jnp.asarray(cond, jnp.float32), phi)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  full = diffusion.rescale_guidance(jnp.asarray(guided), jnp.asarray(cond), 1.0)
  np.testing.assert_allclose(np.asarray(full).reshape(3, -1).std(1), std_c[:, 0, 0], rtol=1e-5)


def test_dynamic_threshold_matches_numpy_percentile():
  rng = np.random.default_rng(1)
  x0 = rng.normal(size=(4, 3, 8, 8)) * np.array([0.3, 1.0, 2.0, 5.0])[:, None, None, None]
  got = np.asarray(diffusion.dynamic_threshold(jnp.asarray(x0, jnp.float32), 0.995))
  s = np.maximum(np.quantile(np.abs(x0).reshape(4, -1), 0.995, axis=1), 1.0)[:, None, None, None]
  np.testing.assert_allclose(got, np.clip(x0, -s, s) / s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[0], x0[0], rtol=1e-6)  # s floored at 1: small x0 unchanged
  assert np.abs(got).max() <= 1.0 + 1e-6


def _dynamic_threshold_np(x0, percentile):
  """Imagen's rule per example: s = max(percentile of |x0|, 1); clip to [-s, s], divide by s."""
  flat = np.abs(x0.reshape(x0.shape[0], -1))
  s = np.maximum(np.percentile(flat, 100 * percentile, axis=1), 1.0)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
  return np.clip(x0, -s, s) / s


def test_thresholding_factories_match_numpy():
  rng = np.random.default_rng(2)
  x0 = rng.normal(size=(3, 50)) * np.array([0.4, 2.0, 6.0])[:, None]
  for percentile in (0.9, 0.6):
    got = diffusion.dynamic_thresholding(percentile)(jnp.asarray(x0, jnp.float32))
    np.testing.assert_allclose(got, _dynamic_threshold_np(x0, percentile), rtol=1e-5,
                               atol=1e-6)
  got = diffusion.static_thresholding(0.7)(jnp.asarray(x0, jnp.float32))
  np.testing.assert_allclose(got, np.clip(x0, -0.7, 0.7), rtol=1e-6)
  with pytest.raises(ValueError, match="percentile must be in"):
    diffusion.dynamic_thresholding(1.5)


@pytest.mark.parametrize("name", ["static", "dynamic"])
def test_x0_transform_is_applied_to_every_x0_prediction_of_the_sampler(name):
  # DDIM by hand: x' = a' x0 + s' (x - a x0) / s with x0 thresholded at every step.
  transform, transform_np = {
      "static": (diffusion.static_thresholding(1.0), lambda x0: np.clip(x0, -1.0, 1.0)),
      "dynamic": (diffusion.dynamic_thresholding(0.8), lambda x0: _dynamic_threshold_np(x0, 0.8)),
  }[name]
  times = np.array([1000, 800, 600, 400, 200, 0]) / 1000
  with jax.enable_x64(True):
    schedule = diffusion.linear_schedule()
    mu, cov = np.array([3.0, -3.0, 0.5]), np.eye(3) * 0.1  # far outside [-1, 1]
    x_T = np.random.default_rng(3).normal(size=(8, 3))
    got = diffusion.sample(oracles.gaussian_denoiser(schedule, mu, cov), None,
                           jnp.asarray(x_T), schedule, sampler="ddim", num_steps=5,
                           prediction="x0", x0_transform=transform)
    alphas, sigmas = (np.asarray(v) for v in schedule.alpha_sigma(times))

  def ddim(transform_np):
    x = x_T
    for i in range(5):
      x0 = transform_np(oracles.gaussian_x0_np(x, alphas[i], sigmas[i], mu, cov))
      x = alphas[i + 1] * x0 + sigmas[i + 1] * (x - alphas[i] * x0) / sigmas[i]
    return x

  want = ddim(transform_np)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
  assert np.abs(ddim(lambda x0: x0) - want).max() > 1.0  # the thresholds bind


def test_img2img_keeps_the_data_distribution_and_strength_is_traced():
  # Noising a data sample to t = strength and integrating the exact ODE back gives data
  # again; small strength stays near the input. strength changes do not recompile.
  schedule = diffusion.linear_schedule(discrete=False)
  mu, cov = oracles.random_gaussian(D, seed=2, eigenvalues=(0.3, 1.2))
  denoise = oracles.gaussian_denoiser(schedule, mu.astype(np.float32), cov.astype(np.float32))
  n = 20000
  images = mu + jax.random.normal(jax.random.key(0), (n, D)) @ np.linalg.cholesky(cov).T

  @jax.jit
  def edit(strength):
    return diffusion.img2img(denoise, jax.random.key(1), images, schedule, strength=strength,
                             num_steps=30, sampler="dpmpp_2m", prediction="x0",
                             spacing="karras")

  out = np.asarray(edit(jnp.float32(0.6)), np.float64)
  np.testing.assert_allclose(out.mean(0), mu, atol=0.03)
  np.testing.assert_allclose(np.cov(out.T), cov, atol=0.05)
  weak = np.asarray(edit(jnp.float32(0.02)))
  strong_change = np.mean(np.linalg.norm(out - np.asarray(images), axis=1))
  weak_change = np.mean(np.linalg.norm(weak - np.asarray(images), axis=1))
  assert weak_change < 0.2 * strong_change
  assert edit._cache_size() == 1


def test_mixture_mode_weights_from_pure_noise_with_zero_terminal_snr_and_v():
  # Zero terminal SNR makes x_T ~ N(0, I) exactly the t = 1 marginal; with v-prediction x0 is
  # recoverable there. The sampler must then reproduce the mixture weights.
  schedule = diffusion.rescale_zero_terminal_snr(diffusion.scaled_linear_schedule())
  weights = np.array([0.2, 0.3, 0.5], np.float32)
  means = np.array([[3.0, 0.0], [-3.0, 2.0], [0.0, -3.0]], np.float32)
  variances = np.array([0.1, 0.2, 0.15], np.float32)
  denoise = oracles.mixture_denoiser(schedule, weights, means, variances, "v")
  n = 8000
  x_T = jax.random.normal(jax.random.key(0), (n, 2))
  out = np.asarray(diffusion.sample(denoise, None, x_T, schedule, sampler="dpmpp_2m",
                                    num_steps=25, prediction="v"))
  mode = np.argmin(((out[:, None] - means[None]) ** 2).sum(-1), axis=1)
  frequencies = np.bincount(mode, minlength=3) / n
  np.testing.assert_allclose(frequencies, weights, atol=0.025)  # 4.5 binomial std errors
  within = ((out - means[mode]) ** 2).sum(-1)
  assert np.median(within) < 4 * variances.max()
  with pytest.raises(ValueError, match="zero terminal SNR"):
    diffusion.sample(denoise, None, x_T, schedule, num_steps=5, prediction="eps")
