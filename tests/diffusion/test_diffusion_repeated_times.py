"""Zero-length steps: img2img on a discrete schedule with a traced strength that leaves fewer
training timesteps than sampler steps repeats grid times; every sampler must treat a repeat as
the identity, i.e. give exactly the result on the grid with the repeats removed.

The reference is the numpy transcription of each sampler's published update rule
(diffusion_oracles) run on the deduplicated grid, with the exact Gaussian denoiser.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion
import diffusion_oracles as oracles

T = 100
STRENGTH = 0.06
NUM_STEPS = 15
# round(100 * 0.06 * (1 - i / 15)) / 100, written out: 6 distinct times below t = 0.06, 15
# steps, repeats in the middle, at the start and at t = 0. With 6 moving steps (< 15) the
# multistep solvers must lower their final orders, although num_steps is 15.
GRID = np.array([6, 6, 5, 5, 4, 4, 4, 3, 3, 2, 2, 2, 1, 1, 0, 0]) / T
DEDUPLICATED = np.array([6, 5, 4, 3, 2, 1, 0]) / T
MOVING_STEPS = np.flatnonzero(GRID[:-1] != GRID[1:])
D = 3


def _setup():
  betas = np.linspace(1e-4, 0.02, T)
  schedule = diffusion.linear_schedule(num_train_steps=T)
  mu, cov = oracles.random_gaussian(D, seed=11)
  images = np.random.default_rng(0).normal(size=(4, D)) + mu
  return np.cumprod(1.0 - betas), schedule, mu, cov, images


def _img2img(schedule, mu, cov, images, sampler, prediction, key, eta=None):
  denoise = oracles.gaussian_denoiser(schedule, mu, cov, prediction)
  run = jax.jit(lambda strength: diffusion.img2img(
      denoise, key, jnp.asarray(images), schedule, strength=strength, num_steps=NUM_STEPS,
      sampler=sampler, prediction=prediction, eta=eta))
  return np.asarray(run(jnp.float64(STRENGTH)))


def _start(alpha_bar, images, key):
  """x at t = 0.06: img2img's q_sample with the (float32) noise of its first key."""
  noise = np.asarray(jax.random.normal(jax.random.split(key)[0], images.shape, jnp.float32),
                     np.float64)
  alphas, sigmas = oracles.grid_alpha_sigma_np(alpha_bar, DEDUPLICATED)
  return alphas, sigmas, alphas[0] * images + sigmas[0] * noise


def test_the_traced_strength_grid_repeats_times():
  with jax.enable_x64(True):
    schedule = diffusion.linear_schedule(num_train_steps=T)
    times = jax.jit(lambda s: diffusion.sampling_times(schedule, NUM_STEPS, t_start=s))(
        jnp.float64(STRENGTH))
  np.testing.assert_allclose(times, GRID, atol=1e-12)


@pytest.mark.parametrize("sampler,prediction", [
    ("ddim", "eps"), ("euler", "x0"), ("heun", "eps"), ("dpmpp_2m", "eps"), ("dpmpp_2m", "v"),
    ("dpmpp_3m", "x0")])
def test_repeated_times_are_identity_steps(sampler, prediction):
  key = jax.random.key(5)
  with jax.enable_x64(True):
    alpha_bar, schedule, mu, cov, images = _setup()
    got = _img2img(schedule, mu, cov, images, sampler, prediction, key)
    alphas, sigmas, x_start = _start(alpha_bar, images, key)
    x0_at = lambda x, i: oracles.gaussian_x0_np(x, alphas[i], sigmas[i], mu, cov)
    want = oracles.naive_ode_sample(sampler, alphas, sigmas, x_start, x0_at)
  assert np.all(np.isfinite(got)), got
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("euler_ancestral", 1.0),
                                         ("ddim", 0.5)])
def test_repeated_times_add_no_noise_in_stochastic_samplers(sampler, eta):
  # One key per grid step (jax.random.split(sample_key, num_steps)); a repeat draws nothing,
  # so the moving steps use the draws at their own grid positions.
  key = jax.random.key(6)
  with jax.enable_x64(True):
    alpha_bar, schedule, mu, cov, images = _setup()
    got = _img2img(schedule, mu, cov, images, sampler, "x0", key, eta)
    alphas, sigmas, x_start = _start(alpha_bar, images, key)
    step_keys = jax.random.split(jax.random.split(key)[1], NUM_STEPS)
    noises = [np.asarray(jax.random.normal(step_keys[i], images.shape, jnp.float64))
              for i in MOVING_STEPS]
    x0_at = lambda x, i: oracles.gaussian_x0_np(x, alphas[i], sigmas[i], mu, cov)
    want = oracles.naive_stochastic_sample(sampler, alphas, sigmas, x_start, x0_at, noises,
                                           1.0 if eta is None else eta)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_gradients_through_repeated_times_are_those_of_the_deduplicated_grid():
  # A zero-length step at sigma = 0 has 0 / 0 coefficients, and an eps model's output there
  # (x0 -> eps divides by sigma = 0) is not finite; a repeated step elsewhere calls the
  # network for nothing. None of it may reach the value or the gradients, with respect to the
  # images or to the schedule table, in float32.
  alpha_bar, _, mu, cov, images = _setup()
  table = np.concatenate([[0.0], np.log(alpha_bar)])  # log(alpha_bar) at t = k / T
  key = jax.random.key(0)

  def loss(images, table):
    schedule = diffusion.Schedule(table)
    denoise = oracles.gaussian_denoiser(schedule, mu.astype(np.float32),
                                        cov.astype(np.float32), "eps")
    out = diffusion.img2img(denoise, key, images, schedule, strength=jnp.float32(STRENGTH),
                            num_steps=NUM_STEPS, sampler="dpmpp_2m")
    return jnp.sum(out ** 2)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(images, jnp.float32),
                                                  jnp.asarray(table, jnp.float32))
  grad_images, grad_table = (np.asarray(g, np.float64) for g in grads)
  noise = np.asarray(jax.random.normal(jax.random.split(key)[0], images.shape, jnp.float32),
                     np.float64)
  index = np.round(DEDUPLICATED * T).astype(int)

  def reference_loss(images, table):
    alphas, sigmas = np.sqrt(np.exp(table[index])), np.sqrt(-np.expm1(table[index]))
    x0_at = lambda x, i: oracles.gaussian_x0_np(x, alphas[i], sigmas[i], mu, cov)
    x_start = alphas[0] * images + sigmas[0] * noise
    return np.sum(oracles.naive_ode_sample("dpmpp_2m", alphas, sigmas, x_start, x0_at) ** 2)

  def central_difference(f, step):
    return (f(step) - f(-step)) / (2 * step)

  want_images = np.zeros_like(images)
  for i in np.ndindex(*images.shape):
    unit = np.zeros_like(images)
    unit[i] = 1.0
    want_images[i] = central_difference(lambda h: reference_loss(images + h * unit, table), 1e-3)
  # Along a direction in the table entries at t = 2/T .. 6/T. (Entries 0 and 1 get NaN from
  # sigma(t) = sqrt(1 - alpha_bar) at t = 0 whatever the grid: d sqrt / dx is infinite at 0.)
  direction = np.zeros_like(table)
  direction[2:7] = np.random.default_rng(1).normal(size=5) * table[2:7]
  want_table = central_difference(lambda h: reference_loss(images, table + h * direction), 1e-4)
  assert np.all(np.isfinite(grad_images)) and np.all(np.isfinite(grad_table[2:]))
  np.testing.assert_allclose(grad_images, want_images, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(grad_table[2:] @ direction[2:], want_table, rtol=1e-3)
