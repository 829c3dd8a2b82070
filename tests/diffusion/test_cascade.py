"""`super_resolve`, `sample_cascade` and `refine_coarse_to_fine` against numpy transcriptions.

Every stage denoises Gaussian data exactly (diffusion_oracles). A super-resolution stage's
data are Gaussian around a mean made of its conditioning (the noised upsampled `low_res`,
`low_res_t` and the text), so dropping or altering any of them changes the result. The
references redo in numpy what the docstrings promise: upsample, noise the conditioning to
noise_aug_t with the stage's aug key, start from the stage's noise key, and integrate with
the sampler's published update rule on grids written out here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion
import diffusion_oracles as oracles

T = 100
ALPHA_BAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))  # linear_schedule(T)
BATCH = 3
LOW, HIGH = (2, 2, 1), (4, 4, 1)
D_LOW, D_HIGH = 4, 16
AUG_T = 0.3


def _sr_mean(low_res, low_res_t, text):
  """The super-resolution data mean [B, 16]: works for numpy and jax arrays."""
  return 0.8 * low_res.reshape(low_res.shape[0], -1) + 0.5 * low_res_t[:, None] + text


def _sr_denoiser(schedule, cov, prediction):
  gaussian = oracles.gaussian_denoiser(schedule, np.zeros(D_HIGH), cov, prediction)

  def denoise_fn(x, t, text, low_res, low_res_t):
    mean = _sr_mean(low_res, low_res_t, text)
    return gaussian(x.reshape(x.shape[0], -1), t, mean=mean).reshape(x.shape)

  return denoise_fn


def _base_denoiser(schedule, mu, cov):
  gaussian = oracles.gaussian_denoiser(schedule, mu, cov, "x0")

  def denoise_fn(x, t, text):
    mean = mu + 0.5 * text[:, :D_LOW]
    return gaussian(x.reshape(x.shape[0], -1), t, mean=mean).reshape(x.shape)

  return denoise_fn


def _numpy_sample(sampler, times, x, mean, cov, alpha_sigma):
  """The sampler's update rule from x at times[0] for Gaussian data N(mean [B, d], cov)."""
  alphas, sigmas = alpha_sigma(times)
  shape = x.shape
  x0_at = lambda x, i: oracles.gaussian_x0_np(x, alphas[i], sigmas[i], mean, cov)
  flat = oracles.naive_ode_sample(sampler, alphas, sigmas, x.reshape(shape[0], -1), x0_at)
  return flat.reshape(shape)


def _normal(key, shape):
  """The float32 standard normal draws the cascade makes with `key`, in float64."""
  return np.asarray(jax.random.normal(key, shape, jnp.float32), np.float64)


def _grid_alpha_sigma(times):
  return oracles.grid_alpha_sigma_np(ALPHA_BAR, times)


def _augmented(up, aug_key):
  """q(x_t | up) at t = AUG_T with the stage's aug noise: the conditioning image."""
  alpha, sigma = _grid_alpha_sigma(np.array([AUG_T]))
  return alpha[0] * up + sigma[0] * _normal(aug_key, up.shape)


def _setup(seed):
  rng = np.random.default_rng(seed)
  _, cov_high = oracles.random_gaussian(D_HIGH, seed=seed,
                                        eigenvalues=np.linspace(0.05, 1.0, D_HIGH))
  mu_low, cov_low = oracles.random_gaussian(D_LOW, seed=seed + 1,
                                            eigenvalues=(0.1, 0.3, 0.6, 1.0))
  text = 0.3 * rng.normal(size=(BATCH, D_HIGH))
  return rng, cov_high, mu_low, cov_low, text


def test_super_resolve_matches_a_numpy_transcription():
  key = jax.random.key(1)
  with jax.enable_x64(True):
    rng, cov, _, _, text = _setup(0)
    schedule = diffusion.linear_schedule(num_train_steps=T)
    stage = diffusion.CascadeStage(_sr_denoiser(schedule, cov, "eps"), schedule, HIGH,
                                   sampler="dpmpp_2m", num_steps=6, prediction="eps",
                                   noise_aug_t=AUG_T)
    low = rng.uniform(-1, 1, size=(BATCH,) + LOW)
    got = np.asarray(diffusion.super_resolve(stage, key, low, cond=dict(text=text)))
    noise_key, aug_key, _ = jax.random.split(key, 3)
    low_res = _augmented(oracles.bilinear_upsample_np(low, HIGH[:2]), aug_key)
    mean = _sr_mean(low_res, np.full(BATCH, AUG_T), text)
    times = np.array([100, 83, 67, 50, 33, 17, 0]) / T  # diffusers' trailing spacing
    want = _numpy_sample("dpmpp_2m", times, _normal(noise_key, (BATCH,) + HIGH), mean, cov,
                         _grid_alpha_sigma)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="super_resolve: upsampled conditioning has shape"):
    bad = stage.__class__(**{**stage.__dict__, "upsample": lambda x, shape: x})
    diffusion.super_resolve(bad, key, low, cond=dict(text=text))


def test_sample_cascade_matches_a_numpy_transcription():
  key = jax.random.key(0)
  nearest = lambda low, shape: jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2)
  with jax.enable_x64(True):
    _, cov_high, mu_low, cov_low, text = _setup(2)
    schedule = diffusion.linear_schedule(num_train_steps=T)
    stages = [
        diffusion.CascadeStage(_base_denoiser(schedule, mu_low, cov_low), schedule, LOW,
                               sampler="ddim", num_steps=5, prediction="x0"),
        diffusion.CascadeStage(_sr_denoiser(schedule, cov_high, "v"), schedule, HIGH,
                               sampler="dpmpp_2m", num_steps=6, prediction="v",
                               noise_aug_t=AUG_T, upsample=nearest),
    ]
    low, high = (np.asarray(x) for x in diffusion.sample_cascade(stages, key, BATCH,
                                                                   cond=dict(text=text)))
    stage_keys = []
    for _ in stages:
      key, noise_key, aug_key, _ = jax.random.split(key, 4)
      stage_keys.append((noise_key, aug_key))
    want_low = _numpy_sample("ddim", np.array([100, 80, 60, 40, 20, 0]) / T,
                             _normal(stage_keys[0][0], (BATCH,) + LOW),
                             mu_low + 0.5 * text[:, :D_LOW], cov_low, _grid_alpha_sigma)
    # The second stage is conditioned on the first stage's output as the cascade made it.
    low_res = _augmented(low.repeat(2, axis=1).repeat(2, axis=2), stage_keys[1][1])
    want_high = _numpy_sample("dpmpp_2m", np.array([100, 83, 67, 50, 33, 17, 0]) / T,
                              _normal(stage_keys[1][0], (BATCH,) + HIGH),
                              _sr_mean(low_res, np.full(BATCH, AUG_T), text), cov_high,
                              _grid_alpha_sigma)
  np.testing.assert_allclose(low, want_low, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(high, want_high, rtol=1e-5, atol=1e-5)


def _continuous_cosine_alpha_sigma(times):
  """alpha, sigma of cosine_schedule(discrete=False): log(alpha_bar) at k / T interpolated."""
  grid = np.linspace(0.0, 1.0, T + 1)
  f = np.cos((grid + 0.008) / 1.008 * np.pi / 2) ** 2
  log_alpha_bar = np.log(f / f[0])
  alpha_bar = np.exp(np.interp(times, grid, log_alpha_bar))
  return np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)


def test_refine_coarse_to_fine_matches_a_numpy_transcription():
  key = jax.random.key(3)
  num_steps = 4
  with jax.enable_x64(True):
    rng, cov, _, _, _ = _setup(4)
    schedule = diffusion.cosine_schedule(num_train_steps=T, discrete=False)
    gaussian = oracles.gaussian_denoiser(schedule, np.zeros(D_HIGH), cov, "v")
    # A "text" condition: the data mean, passed through sample_kwargs' cond.
    denoise = lambda x, t, mean: gaussian(x.reshape(x.shape[0], -1), t, mean=mean).reshape(
        x.shape)
    coarse = rng.uniform(-1, 1, size=(2,) + LOW)
    mean = rng.normal(size=(2, D_HIGH))

    @jax.jit
    def refine(strength):
      return diffusion.refine_coarse_to_fine(denoise, key, coarse, schedule, shape=HIGH,
                                             strength=strength, num_steps=num_steps,
                                             prediction="v", cond=dict(mean=mean))

    up = oracles.bilinear_upsample_np(coarse, HIGH[:2])
    noise = _normal(jax.random.split(key)[0], up.shape)
    for strength in (0.5, 0.15):
      times = strength * np.array([1.0, 0.75, 0.5, 0.25, 0.0])  # continuous: not rounded
      alpha, sigma = _continuous_cosine_alpha_sigma(times[:1])
      want = _numpy_sample("dpmpp_2m", times, alpha[0] * up + sigma[0] * noise, mean, cov,
                           _continuous_cosine_alpha_sigma)
      np.testing.assert_allclose(refine(jnp.float64(strength)), want, rtol=1e-8, atol=1e-8)
  assert refine._cache_size() == 1  # strength is traced
  with pytest.raises(ValueError, match="upsampled coarse images have shape"):
    diffusion.refine_coarse_to_fine(denoise, key, coarse, schedule, shape=HIGH, strength=0.5,
                                    num_steps=2, upsample=lambda x, shape: x)
