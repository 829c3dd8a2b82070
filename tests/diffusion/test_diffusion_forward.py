"""Forward process, parameterisations and training losses against naive formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion


def _random(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_q_sample_is_alpha_x0_plus_sigma_noise():
  schedule = diffusion.cosine_schedule()
  x0, noise = _random((3, 4, 4, 2), 0), _random((3, 4, 4, 2), 1)
  t = np.array([0.0, 0.3, 1.0], np.float32)
  a, s = (np.asarray(v)[:, None, None, None] for v in schedule.alpha_sigma(t))
  got = diffusion.q_sample(schedule, jnp.asarray(x0, jnp.bfloat16), t, noise)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, a * np.asarray(jnp.asarray(x0, jnp.bfloat16), np.float32)
                             + s * noise, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="t must be"):
    diffusion.q_sample(schedule, x0, t[:2], noise)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_conversions_round_trip(prediction):
  x0, eps = _random((5, 3), 2), _random((5, 3), 3)
  a = np.linspace(0.1, 0.9, 5)[:, None]
  s = np.sqrt(1 - a ** 2)
  x_t = a * x0 + s * eps
  out = diffusion.output_from_x0_eps(x0, eps, a, s, prediction)
  np.testing.assert_allclose(diffusion.x0_from_output(out, x_t, a, s, prediction), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.eps_from_output(out, x_t, a, s, prediction), eps,
                             atol=1e-5)
  for target in diffusion.PREDICTIONS:
    np.testing.assert_allclose(
        diffusion.convert_output(out, x_t, a, s, prediction, target),
        diffusion.output_from_x0_eps(x0, eps, a, s, target), atol=1e-5)
  np.testing.assert_allclose(diffusion.output_from_x0_eps(x0, eps, a, s, "v"),
                             a * eps - s * x0, atol=1e-6)
  with pytest.raises(ValueError, match="prediction"):
    diffusion.x0_from_output(out, x_t, a, s, "score")


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_loss_is_naive_mse_and_zero_at_the_target(prediction):
  schedule = diffusion.linear_schedule()
  x0, noise, output = _random((4, 6), 4), _random((4, 6), 5), _random((4, 6), 6)
  t = np.array([0.1, 0.4, 0.7, 1.0], np.float32)
  a, s = (np.asarray(v)[:, None] for v in schedule.alpha_sigma(t))
  target = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[prediction]
  per_example = diffusion.denoising_loss(output, x0, noise, t, schedule, prediction=prediction,
                                         reduce=False)
  np.testing.assert_allclose(per_example, ((output - target) ** 2).mean(1), rtol=1e-5)
  zero = diffusion.denoising_loss(target, x0, noise, t, schedule, prediction=prediction)
  assert float(zero) < 1e-10


def test_min_snr_weighting_gives_the_same_x0_space_loss_for_every_output_type():
  # For an x0 error delta at fixed x_t, eps-MSE = SNR |delta|^2, v-MSE = (SNR + 1) |delta|^2;
  # min-SNR weights make all three equal to min(SNR, 5) |delta|^2.
  schedule = diffusion.scaled_linear_schedule()
  x0, noise, delta = _random((6, 8), 7), _random((6, 8), 8), 0.1 * _random((6, 8), 9)
  t = np.array([0.005, 0.02, 0.1, 0.3, 0.6, 0.95], np.float32)
  a, s = (np.asarray(v, np.float64)[:, None] for v in schedule.alpha_sigma(t))
  x_t = a * x0 + s * noise
  x0_hat = x0 + delta
  eps_hat = (x_t - a * x0_hat) / s
  snr = (a[:, 0] / s[:, 0]) ** 2
  want = np.minimum(snr, 5.0) * (delta ** 2).mean(1)
  for prediction in diffusion.PREDICTIONS:
    output = diffusion.output_from_x0_eps(x0_hat, eps_hat, a, s, prediction)
    got = diffusion.denoising_loss(output.astype(np.float32), x0, noise, t, schedule,
                                   prediction=prediction, min_snr_gamma=5.0, reduce=False)
    np.testing.assert_allclose(got, want, rtol=2e-3)


def _training_loss_np(key, x0, weight, scale, prediction, min_snr_gamma):
  """(loss, d loss / d weight) of training_loss re-derived in numpy for the linear schedule and
  the model output = scale * weight * x_t + 0.1 t: t uniform over the grid times (n + 1) / T
  from the first half of the key, noise from the second."""
  num_train = 1000
  alpha_bar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, num_train))
  time_key, noise_key = jax.random.split(key)
  index = np.asarray(jax.random.randint(time_key, (x0.shape[0],), 0, num_train))
  noise = np.asarray(jax.random.normal(noise_key, x0.shape, jnp.float32), np.float64)
  a, s = np.sqrt(alpha_bar[index])[:, None], np.sqrt(1.0 - alpha_bar[index])[:, None]
  t = (index + 1.0) / num_train
  x_t = a * x0 + s * noise
  output = scale * weight * x_t + 0.1 * t[:, None]
  target = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[prediction]
  snr = (a / s)[:, 0] ** 2
  if min_snr_gamma is None:
    example_weight = np.ones_like(snr)
  else:
    # min(SNR, gamma) in x0 space; the eps / v MSEs are SNR / (SNR + 1) times the x0 MSE.
    x0_mse_per_output_mse = {"eps": 1.0 / snr, "x0": 1.0, "v": 1.0 / (snr + 1.0)}[prediction]
    example_weight = np.minimum(snr, min_snr_gamma) * x0_mse_per_output_mse
  residual = output - target
  loss = np.mean(example_weight * np.mean(residual ** 2, axis=1))
  grad = np.mean(example_weight * np.mean(2 * residual * scale * x_t, axis=1))
  return loss, grad, snr


@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_training_loss_matches_a_numpy_rederivation(prediction, min_snr_gamma):
  schedule = diffusion.linear_schedule()
  x0 = _random((64, 3), 10).astype(np.float64)
  key = jax.random.key(0)

  def loss(weight):
    denoise = lambda x, t, scale: scale * weight * x + 0.1 * t[:, None]
    return diffusion.training_loss(denoise, key, jnp.asarray(x0, jnp.float32), schedule,
                                   prediction=prediction, cond=dict(scale=2.0),
                                   min_snr_gamma=min_snr_gamma)

  value, grad = jax.jit(jax.value_and_grad(loss))(jnp.float32(0.3))
  want, want_grad, snr = _training_loss_np(key, x0, 0.3, 2.0, prediction, min_snr_gamma)
  assert (snr > 5.0).any() and (snr < 5.0).any()  # min-SNR clips some examples, not all
  np.testing.assert_allclose(value, want, rtol=1e-4)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4)


def test_train_times_are_on_the_grid_for_discrete_schedules():
  discrete = diffusion.linear_schedule(num_train_steps=10)
  t = np.asarray(diffusion.sample_train_times(jax.random.key(0), 2000, discrete))
  np.testing.assert_allclose(np.sort(np.unique(np.round(t * 10))), np.arange(1, 11))
  continuous = diffusion.linear_schedule(discrete=False)
  t = np.asarray(diffusion.sample_train_times(jax.random.key(0), 2000, continuous))
  assert t.min() > 0 and t.max() <= 1 and len(np.unique(t)) > 1900


def test_condition_dropout():
  cond = dict(text=jnp.ones((4000, 3, 2)), mask=jnp.ones((4000, 3), bool))
  null = dict(text=jnp.zeros((3, 2)), mask=jnp.zeros((1, 3), bool))
  dropped, keep = diffusion.drop_condition(jax.random.key(0), cond, null, 0.1)
  keep = np.asarray(keep)
  assert abs((1 - keep.mean()) - 0.1) < 0.02
  np.testing.assert_array_equal(np.asarray(dropped["text"])[:, 0, 0], keep.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(dropped["mask"])[:, 0], keep)
  with pytest.raises(ValueError, match="structure"):
    diffusion.drop_condition(jax.random.key(0), cond, dict(text=null["text"]), 0.1)


def test_max_time_restricts_train_times():
  discrete = diffusion.linear_schedule(num_train_steps=10)
  t = np.asarray(diffusion.sample_train_times(jax.random.key(0), 2000, discrete, max_time=0.3))
  np.testing.assert_allclose(np.sort(np.unique(np.round(t * 10))), [1, 2, 3])
  tiny = np.asarray(diffusion.sample_train_times(jax.random.key(0), 50, discrete, max_time=0.01))
  np.testing.assert_allclose(tiny, 0.1)  # at least the first grid time
  continuous = diffusion.linear_schedule(discrete=False)
  t = np.asarray(diffusion.sample_train_times(jax.random.key(0), 2000, continuous, max_time=0.3))
  assert t.min() > 0 and t.max() <= 0.3 and t.max() > 0.29
  full = diffusion.sample_train_times(jax.random.key(0), 2000, continuous)
  np.testing.assert_array_equal(full, diffusion.sample_train_times(jax.random.key(0), 2000,
                                                                   continuous, max_time=1.0))
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match="max_time must be in"):
      diffusion.sample_train_times(jax.random.key(0), 4, discrete, max_time=bad)
