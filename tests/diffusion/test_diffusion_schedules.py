"""Schedules and sampling grids against naive numpy formulas and published values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion

T = 1000


def _alpha_bar_at_indices(schedule):
  t = (np.arange(T) + 1) / T
  return np.asarray(schedule.alpha(jnp.asarray(t))) ** 2


@pytest.mark.parametrize("make,betas", [
    (diffusion.linear_schedule, np.linspace(1e-4, 0.02, T)),
    (diffusion.scaled_linear_schedule, np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2),
])
def test_discrete_schedules_match_cumprod_of_betas(make, betas):
  np.testing.assert_allclose(_alpha_bar_at_indices(make()), np.cumprod(1 - betas), rtol=2e-5)


def test_published_terminal_values():
  # DDPM's linear schedule ends at alpha_bar ~ 4.04e-5; Stable Diffusion's at ~ 4.68e-3.
  assert abs(_alpha_bar_at_indices(diffusion.linear_schedule())[-1] - 4.04e-5) < 1e-6
  assert abs(_alpha_bar_at_indices(diffusion.scaled_linear_schedule())[-1] - 4.68e-3) < 1e-4


def test_cosine_matches_nichol_dhariwal_betas():
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(T + 1) / T
  betas = np.minimum(1 - f(t[1:]) / f(t[:-1]), 0.999)
  np.testing.assert_allclose(_alpha_bar_at_indices(diffusion.cosine_schedule()),
                             np.cumprod(1 - betas), rtol=1e-4, atol=1e-9)
  continuous = diffusion.cosine_schedule(discrete=False)
  mid = np.asarray([0.1, 0.5, 0.9])
  np.testing.assert_allclose(np.asarray(continuous.alpha(mid)) ** 2, f(mid) / f(0), rtol=1e-4)


def test_continuous_linear_is_the_vp_sde():
  schedule = diffusion.linear_schedule(discrete=False)
  t = np.array([0.001, 0.25, 0.5, 1.0])
  want = np.exp(-(0.1 * t + 0.5 * (20 - 0.1) * t ** 2))
  np.testing.assert_allclose(np.asarray(schedule.alpha(t)) ** 2, want, rtol=1e-5)
  assert not schedule.discrete


def test_alpha_sigma_identities_and_log_snr_inverse():
  schedule = diffusion.scaled_linear_schedule()
  t = jnp.linspace(0.0, 1.0, 101)
  alpha, sigma = schedule.alpha_sigma(t)
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, rtol=1e-6)
  assert float(sigma[0]) == 0.0 and float(alpha[0]) == 1.0
  lam = schedule.log_snr(t[1:])
  assert np.all(np.diff(np.asarray(lam)) < 0)
  np.testing.assert_allclose(lam, np.log(alpha[1:] / sigma[1:]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(schedule.time_from_log_snr(lam), t[1:], atol=1e-5)
  np.testing.assert_allclose(schedule.time_from_index(jnp.arange(3)), [1e-3, 2e-3, 3e-3])


def test_schedule_maths_stays_float32_for_bfloat16_times():
  schedule = diffusion.scaled_linear_schedule()
  alpha, sigma = schedule.alpha_sigma(jnp.asarray([0.5, 0.999], jnp.bfloat16))
  assert alpha.dtype == jnp.float32 and sigma.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(schedule.log_snr(jnp.asarray([0.999], jnp.bfloat16)))))


def test_zero_terminal_snr_rescale_matches_lin_et_al_algorithm_1():
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
  root = np.sqrt(np.cumprod(1 - betas))
  root_0, root_T = root[0], root[-1]
  want = ((root - root_T) * root_0 / (root_0 - root_T)) ** 2
  schedule = diffusion.rescale_zero_terminal_snr(diffusion.scaled_linear_schedule())
  got = _alpha_bar_at_indices(schedule)
  np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-4, atol=1e-12)
  assert got[-1] < 1e-20 and float(schedule.sigma(1.0)) == 1.0


def test_karras_sigmas_formula():
  got = diffusion.karras_sigmas(0.1, 10.0, 5, rho=7.0)
  ramp = np.linspace(0, 1, 5)
  want = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert diffusion.karras_sigmas(0.1, 10.0, 1).shape == (1,)


@pytest.mark.parametrize("num_steps", [7, 50])
def test_uniform_discrete_spacing_is_diffusers_trailing(num_steps):
  schedule = diffusion.linear_schedule()
  got = np.asarray(diffusion.sampling_times(schedule, num_steps))
  trailing = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1  # indices n
  np.testing.assert_allclose(got[:-1], (trailing + 1) / T, atol=1e-7)
  assert got[-1] == 0.0 and got.shape == (num_steps + 1,)


def test_karras_and_log_snr_spacings():
  schedule = diffusion.scaled_linear_schedule()
  times = diffusion.sampling_times(schedule, 10, "karras")
  levels = diffusion.karras_sigmas(schedule.karras_sigma(1.0 / T), schedule.karras_sigma(1.0),
                                   10)
  np.testing.assert_allclose(schedule.karras_sigma(times[:-1]), levels, rtol=1e-4)
  assert float(times[-1]) == 0.0
  times = diffusion.sampling_times(schedule, 10, "log_snr", t_start=0.7)
  lam = np.asarray(schedule.log_snr(times[:-1]))
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)
  assert abs(float(times[0]) - 0.7) < 1e-7


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match="betas"):
    diffusion.from_betas(np.array([0.1, -0.2]))
  with pytest.raises(ValueError, match="strictly decreasing"):
    diffusion.from_alpha_bar(np.array([0.5, 0.9]))
  with pytest.raises(ValueError, match="spacing"):
    diffusion.sampling_times(diffusion.linear_schedule(), 10, "leading")
  with pytest.raises(ValueError, match="exceeds"):
    diffusion.sampling_times(diffusion.linear_schedule(num_train_steps=20), 30)
  with pytest.raises(ValueError, match="sampler"):
    diffusion.sample(lambda x, t: x, None, jnp.zeros((1, 2)), diffusion.linear_schedule(),
                     sampler="plms")


def test_schedule_is_a_pytree_for_jit():
  schedule = diffusion.scaled_linear_schedule()
  f = jax.jit(lambda s, t: s.alpha(t))
  np.testing.assert_allclose(f(schedule, 0.5), schedule.alpha(0.5), rtol=1e-6)
  leaves, treedef = jax.tree_util.tree_flatten(schedule)
  assert len(leaves) == 1 and jax.tree_util.tree_unflatten(treedef, leaves).discrete
