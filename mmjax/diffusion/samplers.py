"""`sample`: every sampler is one `lax.scan` over per-step coefficients computed before it.

The scan body calls the network once (Heun: twice) and combines the current state with the
x0 prediction(s) by precomputed scalars; there is no timestep look-up, and multistep solvers
do not compute every order and then select one: their per-step order (lower at warm-up and
at the final step) is folded into the coefficients, where the coefficient on an older x0
prediction is simply 0 at a lower-order step.

The denoiser contract: `denoise_fn(x_t, t, **cond) -> output`, x_t [B, ...] in float32 (or
float64 if the schedule is), t [B] the continuous time in [0, 1] of `mmjax.diffusion.schedules`
(a discrete schedule's index is `schedule.index_from_time(t)` = t * T - 1), output [B, ...]
of type `prediction` ("eps", "x0" or "v"), any float dtype (it is cast to float32).

A repeated time (a zero-length step: a discrete grid from a traced t_start that leaves fewer
training timesteps than steps, or an explicit `times` with repeats) is an identity step in
every sampler, skipped without a network call (`lax.cond`): the state, the multistep history
and the solver orders are those of the grid with the repeats removed.

Compilation: `sample` is a pure traceable function; jit it (or the function that calls it)
once per (shapes, num_steps, sampler); guidance scale, conditioning, eta, t_start and the
schedule table may be traced arguments and then never recompile.
"""
import jax
import jax.numpy as jnp

from mmjax.diffusion import forward
from mmjax.diffusion import parameterization
from mmjax.diffusion.schedules import Schedule
from mmjax.diffusion.timesteps import sampling_times

SAMPLERS = ("ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m")
_HISTORY = {"dpmpp_2m": 1, "dpmpp_3m": 2}  # older x0 predictions a multistep solver keeps
# diffusers' lower_order_final: below this many steps the last steps drop order (stability).
_LOWER_ORDER_FINAL_BELOW = 15


def sample(denoise_fn, key, x_T, schedule: Schedule, *, sampler: str = "dpmpp_2m",
           num_steps: int | None = 20, prediction: str = "eps", spacing: str = "uniform",
           t_start=1.0, eta=None, cond: dict | None = None, x0_transform=None, times=None):
  """Draws x_0 from x_T by integrating the reverse process from t_start to 0.

  Args:
    denoise_fn: `(x_t [B, ...], t [B], **cond) -> output [B, ...]`, see the module docstring.
    key: PRNG key for the stochastic samplers (ddpm, euler_ancestral, ddim with eta > 0).
    x_T: [B, ...] the starting point at t_start, e.g. N(0, I) noise at t_start = 1.
    schedule: the noise schedule the model was trained with.
    sampler: one of SAMPLERS. ddim (eta = 0) and euler are the same first-order ODE solver
      (Euler in the Karras parameterisation); ddpm is ddim with eta = 1 (the DDPM posterior);
      euler_ancestral is k-diffusion's; heun is Karras et al.'s 2nd-order method (2 network
      calls a step, Euler on the last step to t = 0); dpmpp_2m / dpmpp_3m are DPM-Solver++
      multistep (data prediction) with lower-order warm-up and final steps.
    num_steps: number of steps N (N + 1 times); may be None when `times` is given.
    prediction: what denoise_fn outputs: "eps", "x0" or "v".
    spacing: time grid, see `timesteps.sampling_times`.
    t_start: start time (1 = pure noise; < 1 for img2img/SDEdit); may be traced.
    eta: stochasticity of ddim (default 0) and euler_ancestral (default 1); may be traced.
    cond: dict of keyword arrays passed to denoise_fn (text embeddings, masks ...).
    x0_transform: optional `x0 [B, ...] -> x0` applied to every x0 prediction, e.g.
      `guidance.dynamic_thresholding()`.
    times: optional explicit decreasing time grid [N + 1] overriding spacing/t_start. Its
      last entry must be concrete for heun (it decides whether the last step is Euler).

  Returns:
    x_0 [B, ...] in x_T's dtype; the scan state is at least float32.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}, expected one of {SAMPLERS}")
  if times is None:
    if num_steps is None:
      raise ValueError("give num_steps (or an explicit times grid)")
    times = sampling_times(schedule, num_steps, spacing, t_start)
    ends_at_zero = True
  else:
    times, ends_at_zero = _check_times(times, num_steps, schedule, sampler)
  return _sample_on_grid(denoise_fn, key, x_T, schedule, times, ends_at_zero, sampler=sampler,
                         prediction=prediction, eta=eta, cond=cond, x0_transform=x0_transform)


def _sample_on_grid(denoise_fn, key, x_T, schedule, times, ends_at_zero, *, sampler,
                    prediction, eta, cond, x0_transform):
  """`sample` on a given time grid [N + 1]; ends_at_zero: static, whether times[-1] == 0."""
  parameterization.check_prediction(prediction)
  cond = {} if cond is None else cond
  if not isinstance(cond, dict):
    raise ValueError(f"cond must be a dict of keyword arrays for denoise_fn, got {type(cond)}")
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1:
    raise ValueError(f"x_T must have a leading batch axis [B, ...], got shape {x_T.shape}")
  dtype = jnp.result_type(x_T.dtype, schedule.dtype)
  alphas, sigmas = (a.astype(dtype) for a in schedule.alpha_sigma(times))
  times = times.astype(dtype)
  _check_invertible(prediction, alphas[0])
  x0_fn = _x0_predictor(denoise_fn, prediction, cond, x0_transform)
  x = x_T.astype(dtype)
  moves = times[:-1] != times[1:]  # [N] False at a zero-length step
  if sampler == "heun":
    x = _heun(x0_fn, x, times, alphas, sigmas, moves, ends_at_zero)
  else:
    stochastic = sampler in ("ddpm", "euler_ancestral") or (
        sampler == "ddim" and eta is not None and not _is_zero(eta))
    if stochastic and key is None:
      raise ValueError(f"sampler {sampler!r} with eta={eta} is stochastic and needs a PRNG key")
    c_x, c_d, c_z = _linear_coefficients(sampler, alphas, sigmas, moves, eta)
    x = _linear_scan(x0_fn, x, key, times, alphas, sigmas, moves, c_x, c_d, c_z, stochastic)
  return x.astype(x_T.dtype)


def img2img(denoise_fn, key, image, schedule: Schedule, *, strength, num_steps: int,
            spacing: str = "uniform", **sample_kwargs):
  """SDEdit / img2img: noise `image` [B, ...] to t = strength, then sample back to t = 0.

  strength in (0, 1]: 1 ignores the image, small values keep it; it may be traced. On a
  discrete schedule the start time is the training time nearest to strength; a traced
  strength with fewer training times below it than num_steps repeats grid times, which are
  identity steps (see the module docstring).
  """
  image = jnp.asarray(image)
  times = sampling_times(schedule, num_steps, spacing, t_start=strength)
  noise_key, sample_key = jax.random.split(key)
  noise = jax.random.normal(noise_key, image.shape, jnp.float32)
  t0 = jnp.full((image.shape[0],), times[0])
  x_t = forward.q_sample(schedule, image.astype(jnp.result_type(image, jnp.float32)), t0, noise)
  if sample_kwargs.get("sampler", "dpmpp_2m") not in SAMPLERS:
    raise ValueError(f"unknown sampler {sample_kwargs['sampler']!r}, expected one of {SAMPLERS}")
  sample_kwargs = dict(dict(sampler="dpmpp_2m", prediction="eps", eta=None, cond=None,
                            x0_transform=None), **sample_kwargs)
  return _sample_on_grid(denoise_fn, sample_key, x_t.astype(image.dtype), schedule, times,
                         True, **sample_kwargs)


def _x0_predictor(denoise_fn, prediction, cond, x0_transform):
  """Wraps denoise_fn so that every sampler sees the x0 prediction, in the state dtype."""
  def x0_fn(x, t, alpha, sigma):
    output = denoise_fn(x, jnp.full((x.shape[0],), t, t.dtype), **cond)
    if output.shape != x.shape:
      raise ValueError(f"denoise_fn returned shape {output.shape}, expected x_t's {x.shape}")
    x0 = parameterization.x0_from_output(output.astype(x.dtype), x, alpha, sigma, prediction)
    if x0_transform is not None:
      x0 = x0_transform(x0).astype(x.dtype)
    return x0
  return x0_fn


def _linear_coefficients(sampler, alphas, sigmas, moves, eta):
  """Per-step (c_x [N], c_d [N, 1 + history], c_z [N]) of x' = c_x x + c_d . (x0s) + c_z z
  at the moving steps (moves [N] True); the scan skips the others (their coefficients may be
  0 / 0)."""
  a, a_next = alphas[:-1], alphas[1:]
  s, s_next = sigmas[:-1], sigmas[1:]
  ks, ks_next = s / a, s_next / a_next  # Karras noise levels sigma / alpha
  zeros = jnp.zeros_like(a)
  if sampler in ("ddim", "ddpm", "euler"):
    eta = 1.0 if sampler == "ddpm" else (0.0 if sampler == "euler" or eta is None else eta)
    # DDIM eq. 16; eta = 1 is the DDPM posterior q(x_{t'} | x_t, x0).
    var_ratio = jnp.clip(1.0 - (a / a_next) ** 2, 0.0, None)
    noise_std = eta * (s_next / s) * jnp.sqrt(var_ratio)
    c_x = jnp.sqrt(jnp.clip(s_next ** 2 - noise_std ** 2, 0.0, None)) / s
    return c_x, (a_next - c_x * a)[:, None], noise_std
  if sampler == "euler_ancestral":
    eta = 1.0 if eta is None else eta
    up = jnp.minimum(ks_next, eta * jnp.sqrt(jnp.clip(
        ks_next ** 2 * (ks ** 2 - ks_next ** 2) / ks ** 2, 0.0, None)))
    down = jnp.sqrt(jnp.clip(ks_next ** 2 - up ** 2, 0.0, None))
    return a_next * down / s, (a_next * (1.0 - down / ks))[:, None], a_next * up
  return _dpmpp_coefficients(_HISTORY[sampler] + 1, moves, a_next, s, s_next, ks,
                             ks_next) + (zeros,)


def _dpmpp_coefficients(max_order, moves, a_next, s, s_next, ks, ks_next):
  """DPM-Solver++ multistep (Lu et al. 2022; diffusers' midpoint 2nd-order and 3rd-order
  updates) as coefficients on the x0 predictions at the current and the one or two previous
  moving steps (zero-length steps, moves False, are skipped: see `_solver_order`)."""
  ratio = ks_next / ks  # exp(-h)
  h = jnp.log(ks) - jnp.log(jnp.where(ks_next > 0, ks_next, 1.0))  # only used where finite
  h = jnp.where((ks_next > 0) & moves, h, 1.0)
  h_prev1, h_prev2 = _previous_moving(h, moves)
  order = _solver_order(max_order, moves, ks_next)

  first = a_next * (1.0 - ratio)  # alpha_t (1 - e^-h): the DDIM / first-order update
  r0 = h_prev1 / h
  w = 0.5 / r0
  second = jnp.stack([first * (1.0 + w), -first * w, jnp.zeros_like(first)], axis=-1)
  r1 = h_prev2 / h
  b_term = a_next * _one_minus_phi1_over_h(h)          # alpha_t ((e^-h - 1) / h + 1)
  c_term = -a_next * _phi2_minus_half(h)               # -alpha_t ((e^-h - 1 + h) / h^2 - 0.5)
  k = r0 / (r0 + r1)
  third = jnp.stack([
      first + b_term * (1.0 + k) / r0 + c_term / (r0 * (r0 + r1)),
      -b_term * (1.0 / r0 + k * (1.0 / r0 + 1.0 / r1)) - c_term * (1.0 / r0 + 1.0 / r1) / (r0 + r1),
      b_term * k / r1 + c_term / (r1 * (r0 + r1)),
  ], axis=-1)
  first = jnp.stack([first, jnp.zeros_like(first), jnp.zeros_like(first)], axis=-1)
  c_d = jnp.where((order == 1)[:, None], first, jnp.where((order == 2)[:, None], second, third))
  return s_next / s, c_d[:, :max_order]


def _previous_moving(h, moves):
  """(h at the previous moving step, h at the one before) for each step [N]; 1 where none."""
  index = jnp.arange(h.shape[0])
  latest = jax.lax.cummax(jnp.where(moves, index, -1))  # last moving step <= i
  prev1 = jnp.concatenate([jnp.full((1,), -1, latest.dtype), latest[:-1]])
  prev2 = jnp.where(prev1 >= 0, prev1[jnp.maximum(prev1, 0)], -1)
  pick = lambda prev: jnp.where(prev >= 0, h[jnp.maximum(prev, 0)], 1.0)
  return pick(prev1), pick(prev2)


def _solver_order(max_order, moves, ks_next):
  """Per-step order [N] of a multistep solver, counted over the moving steps only.

  Warm-up: the k-th moving step (k = 0, 1, ...) has order min(k + 1, max_order). Below
  _LOWER_ORDER_FINAL_BELOW moving steps the last is first order and the one before at most
  second. The step to sigma = 0 (h = inf) is always first order.
  """
  position = jnp.cumsum(moves) - 1  # k of each moving step
  count = jnp.sum(moves)
  order = jnp.minimum(position + 1, max_order)
  few = count < _LOWER_ORDER_FINAL_BELOW
  order = jnp.where(few & (position == count - 1), 1, order)
  order = jnp.where(few & (position == count - 2), jnp.minimum(order, 2), order)
  return jnp.where(ks_next == 0, 1, order)


def _one_minus_phi1_over_h(h):
  """1 - (1 - e^-h) / h, with a series where the direct form cancels (small h)."""
  small = h < 0.1
  hs = jnp.where(small, h, 0.0)
  series = hs / 2 - hs ** 2 / 6 + hs ** 3 / 24 - hs ** 4 / 120 + hs ** 5 / 720
  hd = jnp.where(small, 1.0, h)
  return jnp.where(small, series, 1.0 + jnp.expm1(-hd) / hd)


def _phi2_minus_half(h):
  """(e^-h - 1 + h) / h^2 - 1/2, with a series for small h."""
  small = h < 0.1
  hs = jnp.where(small, h, 0.0)
  series = -hs / 6 + hs ** 2 / 24 - hs ** 3 / 120 + hs ** 4 / 720 - hs ** 5 / 5040
  hd = jnp.where(small, 1.0, h)
  return jnp.where(small, series, (jnp.expm1(-hd) + hd) / hd ** 2 - 0.5)


def _linear_scan(x0_fn, x, key, times, alphas, sigmas, moves, c_x, c_d, c_z, stochastic):
  num_steps, history = c_d.shape[0], c_d.shape[1] - 1
  per_step = dict(t=times[:-1], alpha=alphas[:-1], sigma=sigmas[:-1], moves=moves, c_x=c_x,
                  c_d=c_d)
  if stochastic:
    per_step.update(c_z=c_z, key=jax.random.split(key, num_steps))

  def step(carry, coef):
    def move(carry):
      x, older_x0s = carry
      x0 = x0_fn(x, coef["t"], coef["alpha"], coef["sigma"])
      x_next = coef["c_x"] * x + coef["c_d"][0] * x0
      for k, older in enumerate(older_x0s):
        x_next = x_next + coef["c_d"][k + 1] * older
      if stochastic:
        x_next = x_next + coef["c_z"] * jax.random.normal(coef["key"], x.shape, x.dtype)
      return x_next, ((x0,) + older_x0s)[:history]
    # A zero-length step keeps the state and the history without calling the network (which
    # may not be finite there, e.g. an eps model at sigma = 0).
    return jax.lax.cond(coef["moves"], move, lambda carry: carry, carry), None

  init = (x, tuple(jnp.zeros_like(x) for _ in range(history)))
  (x, _), _ = jax.lax.scan(step, init, per_step)
  return x


def _heun(x0_fn, x, times, alphas, sigmas, moves, ends_at_zero):
  """Karras et al. 2022 Alg. 1 (deterministic) in x / alpha, sigma / alpha coordinates.

  A step to sigma = 0 is Euler (it lands on the x0 prediction), a zero-length step is the
  identity; both may sit anywhere in a traced grid with repeated times."""
  num_steps = times.shape[0] - 1
  num_heun = num_steps - 1 if ends_at_zero else num_steps
  ks = sigmas / alphas
  sl, nx = slice(0, num_heun), slice(1, num_heun + 1)
  per_step = dict(t=times[sl], t_next=times[nx], alpha=alphas[sl], alpha_next=alphas[nx],
                  sigma=sigmas[sl], sigma_next=sigmas[nx], ks=ks[sl], ks_next=ks[nx],
                  moves=moves[sl])

  def step(x, c):
    def heun(x):
      x_ve = x / c["alpha"]
      slope = (x_ve - x0_fn(x, c["t"], c["alpha"], c["sigma"])) / c["ks"]
      dks = c["ks_next"] - c["ks"]
      x_ve_euler = x_ve + dks * slope
      x0_next = x0_fn(c["alpha_next"] * x_ve_euler, c["t_next"], c["alpha_next"],
                      c["sigma_next"])
      slope_next = (x_ve_euler - x0_next) / c["ks_next"]
      return c["alpha_next"] * (x_ve + 0.5 * dks * (slope + slope_next))

    def euler_to_zero(x):  # lands on the x0 prediction
      return c["alpha_next"] * x0_fn(x, c["t"], c["alpha"], c["sigma"])

    move = lambda x: jax.lax.cond(c["ks_next"] > 0, heun, euler_to_zero, x)
    return jax.lax.cond(c["moves"], move, lambda x: x, x), None

  x, _ = jax.lax.scan(step, x, per_step)
  if ends_at_zero:  # Euler to sigma = 0 lands on the x0 prediction
    i = num_steps - 1
    x = jax.lax.cond(moves[i], lambda x: alphas[i + 1] * x0_fn(x, times[i], alphas[i], sigmas[i]),
                     lambda x: x, x)
  return x


def _check_times(times, num_steps, schedule, sampler):
  times = jnp.asarray(times, schedule.dtype)
  if times.ndim != 1 or times.shape[0] < 2:
    raise ValueError(f"times must be a 1-D grid [N + 1] with N >= 1, got shape {times.shape}")
  if num_steps is not None and times.shape[0] != num_steps + 1:
    raise ValueError(f"times has {times.shape[0]} entries, expected num_steps + 1 = "
                     f"{num_steps + 1}")
  try:
    last = float(times[-1])
  except Exception:  # traced grid  # pylint: disable=broad-except
    if sampler == "heun":
      raise ValueError("heun needs a concrete times grid (its last entry decides whether the "
                       "last step is Euler)") from None
    return times, True
  return times, last == 0.0


def _check_invertible(prediction, alpha_start):
  if prediction != "eps":
    return
  try:
    alpha_start = float(alpha_start)
  except Exception:  # traced schedule: nothing to check  # pylint: disable=broad-except
    return
  if alpha_start < 1e-6:
    raise ValueError(f"alpha(t_start) = {alpha_start:.3g}: x0 cannot be recovered from an eps "
                     "prediction at zero terminal SNR; use prediction='v' or 'x0'")


def _is_zero(value):
  try:
    return float(value) == 0.0
  except Exception:  # traced  # pylint: disable=broad-except
    return False
