"""Sampling time grids: the num_steps + 1 times t_0 = t_start > ... > t_N = 0 a sampler visits."""
import jax.numpy as jnp

from mmjax.diffusion.schedules import Schedule, karras_sigmas

SPACINGS = ("uniform", "karras", "log_snr")
KARRAS_RHO = 7.0


def sampling_times(schedule: Schedule, num_steps: int, spacing: str = "uniform",
                   t_start=1.0):
  """The time grid of a sampler, [num_steps + 1], decreasing from t_start to 0.

  Spacings:
    uniform: t_i = t_start (1 - i / N). On a discrete schedule each time is rounded to the
      training grid k / T; with t_start = 1 this is diffusers' "trailing" spacing.
    karras: Karras et al. noise levels sigma/alpha from sigma(t_start) down to the smallest
      training noise level (t = 1 / T), rho = 7, then t = 0. Times are fractional.
    log_snr: uniform in lambda between t_start and t = 1 / T, then t = 0 (DPM-Solver's
      "logSNR" spacing). Times are fractional.

  The last step always goes to t = 0 (sigma = 0), where the sample is the x0 prediction.
  `t_start` may be a traced scalar (img2img strength without recompiling). A uniform discrete
  grid needs num_steps training times at or below t_start: a concrete t_start with fewer
  raises, a traced one repeats times, which every sampler takes as identity steps.
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive Python int, got {num_steps!r}")
  if spacing not in SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}, expected one of {SPACINGS}")
  dtype = schedule.dtype
  t_start = jnp.asarray(t_start, dtype)
  num_train = schedule.num_train_steps
  if spacing == "uniform":
    if schedule.discrete:
      _check_discrete_steps(num_steps, t_start, num_train)
    times = t_start * (1.0 - jnp.arange(num_steps + 1, dtype=dtype) / num_steps)
    if schedule.discrete:
      times = jnp.round(times * num_train) / num_train
      times = times.at[0].set(jnp.maximum(times[0], 1.0 / num_train))
    return times
  t_min = jnp.asarray(1.0 / num_train, dtype)
  if spacing == "karras":
    levels = karras_sigmas(schedule.karras_sigma(t_min), schedule.karras_sigma(t_start),
                           num_steps, rho=KARRAS_RHO)
    times = schedule.time_from_log_snr(-jnp.log(levels))
  else:
    ramp = jnp.linspace(0.0, 1.0, num_steps, dtype=dtype)
    lam_start, lam_end = schedule.log_snr(t_start), schedule.log_snr(t_min)
    times = schedule.time_from_log_snr(lam_start + ramp * (lam_end - lam_start))
  times = times.at[0].set(t_start)  # exact, not the round trip through lambda
  return jnp.concatenate([times, jnp.zeros((1,), dtype)])


def _check_discrete_steps(num_steps, t_start, num_train):
  try:
    available = int(round(float(t_start) * num_train))
  except Exception:  # traced t_start: cannot check here  # pylint: disable=broad-except
    return
  if num_steps > max(available, 1):
    raise ValueError(f"num_steps={num_steps} exceeds the {available} training timesteps "
                     f"below t_start={float(t_start)} of this discrete schedule")
