"""Exact sampler tests on Gaussian data, where the optimal denoiser and the ODE flow are known.

ODE samplers driven by the exact Gaussian denoiser are affine maps x_T -> x_0, so their error
against the exact flow is measured exactly (no sampling noise) by probing the map at 0 and the
unit vectors. Grids use Karras spacing: its last nonzero noise level is the same for every N,
so the reference (exact flow to that level, then the shared final x0 jump) is fixed and the
error falls at the solver's order.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion
import diffusion_oracles as oracles

D = 3
STEPS = (10, 20, 40)


def _map_and_reference(sampler, num_steps, schedule, mu, cov, spacing="karras"):
  denoise = oracles.gaussian_denoiser(schedule, mu, cov)
  run = jax.jit(lambda x: diffusion.sample(denoise, None, x, schedule, sampler=sampler,
                                           num_steps=num_steps, prediction="x0",
                                           spacing=spacing))
  a_map, b_map = oracles.affine_map(run, D)
  times = np.asarray(diffusion.sampling_times(schedule, num_steps, spacing))
  a0, s0 = (float(v) for v in schedule.alpha_sigma(times[0]))
  a_min, s_min = (float(v) for v in schedule.alpha_sigma(times[-2]))
  flow, shift = oracles.exact_flow(mu, cov, a0, s0, a_min, s_min)
  gain = a_min * cov @ np.linalg.inv(a_min ** 2 * cov + s_min ** 2 * np.eye(D))  # final x0 jump
  ref_a, ref_b = gain @ flow, mu + gain @ (shift - a_min * mu)
  return (a_map, b_map), (ref_a, ref_b), (a0, s0)


def _map_error(sampler, num_steps, schedule, mu, cov):
  (a_map, b_map), (ref_a, ref_b), _ = _map_and_reference(sampler, num_steps, schedule, mu, cov)
  return np.linalg.norm(a_map - ref_a) + np.linalg.norm(b_map - ref_b)


def _moment_error(sampler, num_steps, schedule, mu, cov, spacing):
  """|mean - mu| + |cov - Sigma|_F of the output when x_T has the exact marginal at t_start."""
  (a_map, b_map), _, (a0, s0) = _map_and_reference(sampler, num_steps, schedule, mu, cov,
                                                   spacing)
  mean_T, cov_T = a0 * mu, a0 ** 2 * cov + s0 ** 2 * np.eye(D)
  return (np.linalg.norm(a_map @ mean_T + b_map - mu)
          + np.linalg.norm(a_map @ cov_T @ a_map.T - cov))


def _slope(errors, steps):
  return np.polyfit(np.log(steps), np.log(errors), 1)[0]


_ERRORS = {}


def _errors(sampler, steps=STEPS):
  """Map errors at each step count (cached: several tests read the same runs)."""
  if (sampler, steps) not in _ERRORS:
    with jax.enable_x64(True):
      schedule = diffusion.scaled_linear_schedule()
      mu, cov = oracles.random_gaussian(D)
      _ERRORS[sampler, steps] = [_map_error(sampler, n, schedule, mu, cov) for n in steps]
  return _ERRORS[sampler, steps]


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_error_falls_at_the_solver_order(sampler, order):
  errors = _errors(sampler)
  slope = _slope(errors, STEPS)
  assert -order - 0.35 < slope < -order + 0.25, (sampler, slope, errors)
  assert errors[-1] < 0.1


def test_euler_is_ddim():
  # Euler on the Karras ODE d(x/alpha)/d(sigma/alpha) = (x/alpha - x0)/(sigma/alpha) is DDIM.
  with jax.enable_x64(True):
    schedule = diffusion.scaled_linear_schedule()
    mu, cov = oracles.random_gaussian(D)
    x_T = jax.random.normal(jax.random.key(0), (4, D), jnp.float64)
    denoise = oracles.gaussian_denoiser(schedule, mu, cov)
    outs = [diffusion.sample(denoise, None, x_T, schedule, sampler=s, num_steps=10,
                             prediction="x0") for s in ("euler", "ddim")]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12)


def test_dpmpp_3m_beats_2m_and_is_at_least_second_order():
  # 3M starts with a first- and a second-order step, whose local errors keep the global
  # order near 2 at these step counts; its error constant is still several times smaller.
  errors_3m, errors_2m = _errors("dpmpp_3m"), _errors("dpmpp_2m")
  assert _slope(errors_3m, STEPS) < -1.6, errors_3m
  # At 10 steps 3M runs lower-order final steps (diffusers' rule below 15 steps).
  assert all(e3 < 0.5 * e2 for e3, e2 in zip(errors_3m[1:], errors_2m[1:])), (errors_3m,
                                                                             errors_2m)


def test_dpmpp_2m_at_20_steps_is_closer_than_ddim_at_50():
  with jax.enable_x64(True):
    schedule = diffusion.scaled_linear_schedule()
    mu, cov = oracles.random_gaussian(D, seed=2)
    err_dpm = _moment_error("dpmpp_2m", 20, schedule, mu, cov, "karras")
    err_ddim = _moment_error("ddim", 50, schedule, mu, cov, "karras")
  assert err_dpm < 0.5 * err_ddim, (err_dpm, err_ddim)


def test_many_steps_reach_the_data_distribution():
  # With many steps the only error left is the final x0 jump from the smallest training
  # noise level, which is O(sigma_min^2 / lambda_min) ~ 1e-2 here.
  with jax.enable_x64(True):
    schedule = diffusion.linear_schedule()
    mu, cov = oracles.random_gaussian(D, seed=3, eigenvalues=(0.3, 1.0, 2.0))
    err = _moment_error("heun", 200, schedule, mu, cov, "karras")
  assert err < 2e-3, err


def _gaussian_x0_at(schedule, times, mu, cov):
  """(alphas, sigmas, x0_at) along `times` for the exact Gaussian denoiser, in numpy."""
  alphas, sigmas = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(times))
  return alphas, sigmas, lambda x, i: oracles.gaussian_x0_np(x, alphas[i], sigmas[i], mu, cov)


@pytest.mark.parametrize("sampler,num_steps", [("heun", 9), ("dpmpp_2m", 20),
                                               ("dpmpp_3m", 20), ("dpmpp_3m", 8)])
def test_matches_naive_published_update_rules(sampler, num_steps):
  with jax.enable_x64(True):
    schedule = diffusion.cosine_schedule()
    mu, cov = oracles.random_gaussian(D, seed=4)
    x_T = np.random.default_rng(0).normal(size=(5, D))
    denoise = oracles.gaussian_denoiser(schedule, mu, cov)
    got = diffusion.sample(denoise, None, jnp.asarray(x_T), schedule, sampler=sampler,
                           num_steps=num_steps, prediction="x0", spacing="log_snr")
    times = diffusion.sampling_times(schedule, num_steps, "log_snr")
    alphas, sigmas, x0_at = _gaussian_x0_at(schedule, times, mu, cov)
    want = oracles.naive_ode_sample(sampler, alphas, sigmas, x_T, x0_at)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["dpmpp_3m", "ddpm"])
def test_eps_x0_v_parameterisations_give_the_same_trajectory(sampler):
  with jax.enable_x64(True):
    schedule = diffusion.scaled_linear_schedule()
    mu, cov = oracles.random_gaussian(D, seed=5)
    x_T = jax.random.normal(jax.random.key(0), (4, D), jnp.float64)
    outs = {}
    for prediction in diffusion.PREDICTIONS:
      denoise = oracles.gaussian_denoiser(schedule, mu, cov, prediction)
      outs[prediction] = np.asarray(diffusion.sample(
          denoise, jax.random.key(1), x_T, schedule, sampler=sampler, num_steps=15,
          prediction=prediction))
  np.testing.assert_allclose(outs["eps"], outs["x0"], rtol=1e-8, atol=1e-8)
  np.testing.assert_allclose(outs["v"], outs["x0"], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("euler_ancestral", 1.0),
                                         ("ddim", 0.5)])
def test_stochastic_samplers_match_naive_update_rules_with_the_same_noise(sampler, eta):
  num_steps = 12
  with jax.enable_x64(True):
    schedule = diffusion.linear_schedule()
    mu, cov = oracles.random_gaussian(D, seed=6)
    x_T = np.random.default_rng(1).normal(size=(5, D))
    key = jax.random.key(3)
    denoise = oracles.gaussian_denoiser(schedule, mu, cov)
    got = diffusion.sample(denoise, key, jnp.asarray(x_T), schedule, sampler=sampler,
                           num_steps=num_steps, prediction="x0", eta=eta)
    # The sampler's noise stream: one key per step from jax.random.split(key, num_steps).
    noises = [np.asarray(jax.random.normal(k, x_T.shape, jnp.float64))
              for k in jax.random.split(key, num_steps)]
    times = diffusion.sampling_times(schedule, num_steps)
    alphas, sigmas, x0_at = _gaussian_x0_at(schedule, times, mu, cov)
    want = oracles.naive_stochastic_sample(sampler, alphas, sigmas, x_T, x0_at, noises,
                                           1.0 if eta is None else eta)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9)


def test_ddpm_with_all_training_steps_reaches_the_data_moments():
  schedule = diffusion.linear_schedule()
  mu, cov = oracles.random_gaussian(2, seed=6, eigenvalues=(0.3, 1.5))
  n = 10000
  key_T, key = jax.random.split(jax.random.key(7))
  a0, s0 = (float(v) for v in schedule.alpha_sigma(1.0))
  chol = np.linalg.cholesky(a0 ** 2 * cov + s0 ** 2 * np.eye(2))
  x_T = a0 * mu + jax.random.normal(key_T, (n, 2)) @ chol.T
  denoise = oracles.gaussian_denoiser(schedule, mu.astype(np.float32), cov.astype(np.float32))
  out = np.asarray(diffusion.sample(denoise, key, x_T, schedule, sampler="ddpm",
                                    num_steps=1000, prediction="x0"), np.float64)
  # Monte Carlo standard errors with 10k samples: ~0.012 (mean), ~0.02 (cov); the 1000-step
  # discretisation bias is ~0.015.
  np.testing.assert_allclose(out.mean(0), mu, atol=0.045)
  np.testing.assert_allclose(np.cov(out.T), cov, atol=0.07)


def test_stochastic_sampler_needs_a_key():
  schedule = diffusion.linear_schedule()
  with pytest.raises(ValueError, match="PRNG key"):
    diffusion.sample(lambda x, t: x, None, jnp.zeros((1, 2)), schedule, sampler="ddpm",
                     num_steps=3)


def test_bfloat16_network_gives_finite_float32_schedule_maths():
  schedule = diffusion.scaled_linear_schedule()
  mu, cov = oracles.random_gaussian(D, seed=8)
  exact = oracles.gaussian_denoiser(schedule, mu.astype(np.float32), cov.astype(np.float32),
                                    "eps")

  def bf16_denoise(x, t):
    assert x.dtype == jnp.float32 and t.dtype == jnp.float32  # state and t stay float32
    return exact(x.astype(jnp.bfloat16).astype(jnp.float32), t).astype(jnp.bfloat16)

  x_T = jax.random.normal(jax.random.key(0), (64, D)).astype(jnp.bfloat16)
  for sampler in ("dpmpp_2m",):
    out = diffusion.sample(bf16_denoise, None, x_T, schedule, sampler=sampler, num_steps=25)
    ref = diffusion.sample(exact, None, x_T.astype(jnp.float32), schedule, sampler=sampler,
                           num_steps=25)
    assert out.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.15)
