"""Variance-preserving noise schedules: x_t = alpha(t) x0 + sigma(t) eps, alpha^2 + sigma^2 = 1.

Time convention (used by every function in mmjax.diffusion): continuous `t` in [0, 1], t = 0
is clean data. A schedule is one table of log(alpha_bar) at the T + 1 grid points t = k / T
(alpha_bar = alpha^2, value 0 at k = 0), linearly interpolated in between, so it is defined for
every real t and training and sampling always see the same alpha(t), sigma(t).

For a discrete schedule with T training steps, the DDPM/diffusers index n in {0, ..., T - 1}
is t = (n + 1) / T (`time_from_index` / `index_from_time`), so alpha_bar[n] of the usual
cumulative product is exactly alpha(t)^2 at that t, and "trailing" timestep spacing is a
uniform grid in t. A continuous schedule (`discrete=False`) is the same table read as a
function of real t; its sampling grids are not snapped to the training grid.

All schedule maths runs in at least float32 (float64 if the table is float64), whatever the
dtype of the images or the network: bfloat16 alpha_bar gives NaN/black last steps.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# log(alpha_bar) is floored here so a zero-terminal-SNR schedule (alpha_bar(1) = 0) stays
# finite: alpha(1) ~ 1e-15, which only eps-prediction cannot invert (see samplers.sample).
_MIN_LOG_ALPHA_BAR = -69.0


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A VP noise schedule as a table of log(alpha_bar) at t = k / T, k = 0..T.

  Attributes:
    log_alpha_bar: [T + 1] float table, log_alpha_bar[0] = 0, strictly decreasing.
    discrete: whether the model was trained on the T grid times only (sampling grids are
      then snapped to it) or on continuous t.
  """
  log_alpha_bar: jax.Array
  discrete: bool = True

  @property
  def num_train_steps(self) -> int:
    """T, the number of grid intervals (training timesteps of a discrete schedule)."""
    return self.log_alpha_bar.shape[0] - 1

  @property
  def dtype(self):
    """The dtype of all schedule maths: at least float32."""
    return jnp.result_type(self.log_alpha_bar.dtype, jnp.float32)

  def log_alpha_bar_at(self, t):
    """log(alpha(t)^2) for t of any shape, in self.dtype (t is clipped to [0, 1])."""
    table = self.log_alpha_bar.astype(self.dtype)
    # The grid is uniform, so the interval is found by arithmetic: a gather, not a search.
    pos = jnp.clip(jnp.asarray(t, self.dtype), 0.0, 1.0) * self.num_train_steps
    index = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, self.num_train_steps - 1)
    frac = pos - index
    return table[index] * (1.0 - frac) + table[index + 1] * frac

  def alpha_sigma(self, t):
    """(alpha(t), sigma(t)), each shaped like t, in self.dtype; sigma(0) = 0 exactly."""
    log_alpha_bar = self.log_alpha_bar_at(t)
    alpha = jnp.exp(0.5 * log_alpha_bar)
    sigma = jnp.sqrt(-jnp.expm1(log_alpha_bar))
    return alpha, sigma

  def alpha(self, t):
    return self.alpha_sigma(t)[0]

  def sigma(self, t):
    return self.alpha_sigma(t)[1]

  def log_snr(self, t):
    """lambda(t) = log(alpha / sigma); +inf at t = 0."""
    log_alpha_bar = self.log_alpha_bar_at(t)
    return 0.5 * (log_alpha_bar - jnp.log(-jnp.expm1(log_alpha_bar)))

  def karras_sigma(self, t):
    """sigma(t) / alpha(t) = exp(-lambda(t)), the noise level of the equivalent VE process."""
    alpha, sigma = self.alpha_sigma(t)
    return sigma / alpha

  def time_from_log_snr(self, log_snr):
    """The inverse of `log_snr`: t with lambda(t) = log_snr (clipped to [0, 1])."""
    log_snr = jnp.asarray(log_snr, self.dtype)
    log_alpha_bar = jax.nn.log_sigmoid(2.0 * log_snr)  # alpha_bar = SNR / (1 + SNR)
    table = self.log_alpha_bar.astype(self.dtype)
    # Sampling grids hold few values: comparing each with the whole table compiles and runs
    # faster than jnp.interp's search.
    value = jnp.clip(log_alpha_bar, table[-1], 0.0)
    index = jnp.sum(value[..., None] <= table[1:-1], axis=-1)
    lo, hi = table[index], table[index + 1]
    frac = (lo - value) / (lo - hi)
    return (index + frac) / self.num_train_steps

  def time_from_index(self, index):
    """Discrete index n in {0..T-1} -> t = (n + 1) / T."""
    return (jnp.asarray(index, self.dtype) + 1.0) / self.num_train_steps

  def index_from_time(self, t):
    """t -> (possibly fractional) discrete index t * T - 1."""
    return jnp.asarray(t, self.dtype) * self.num_train_steps - 1.0


jax.tree_util.register_dataclass(
    Schedule, data_fields=["log_alpha_bar"], meta_fields=["discrete"])


def from_alpha_bar(alpha_bar, *, discrete: bool = True) -> Schedule:
  """A schedule from alpha_bar at t = (n + 1) / T, n = 0..T-1 (diffusers' alphas_cumprod).

  Args:
    alpha_bar: [T] strictly decreasing values in (0, 1]; the last may be 0 (zero terminal SNR).
    discrete: see `Schedule`.
  """
  alpha_bar = np.asarray(alpha_bar, np.float64)
  if alpha_bar.ndim != 1 or alpha_bar.shape[0] < 1:
    raise ValueError(f"alpha_bar must be a non-empty 1-D array [T], got shape {alpha_bar.shape}")
  if np.any(alpha_bar > 1) or np.any(alpha_bar < 0) or np.any(np.diff(alpha_bar) >= 0):
    raise ValueError("alpha_bar must be strictly decreasing values in [0, 1], got "
                     f"min {alpha_bar.min()}, max {alpha_bar.max()}")
  with np.errstate(divide="ignore"):
    log_alpha_bar = np.maximum(np.log(alpha_bar), _MIN_LOG_ALPHA_BAR)
  table = np.concatenate([[0.0], log_alpha_bar])
  # float64 under jax.enable_x64 (exactness tests), float32 otherwise.
  return Schedule(jnp.asarray(table), discrete=discrete)


def from_betas(betas, *, discrete: bool = True) -> Schedule:
  """A schedule from per-step betas [T] (alpha_bar = cumprod(1 - betas))."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas > 1):
    raise ValueError(f"betas must be a 1-D array of values in (0, 1], got shape {betas.shape}, "
                     f"range [{betas.min()}, {betas.max()}]")
  return from_alpha_bar(np.cumprod(1.0 - betas), discrete=discrete)


def linear_schedule(num_train_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02, *, discrete: bool = True) -> Schedule:
  """DDPM's linear betas. Continuous (`discrete=False`): the VP-SDE with
  beta(t) = T (beta_start + t (beta_end - beta_start)), integrated exactly at the grid."""
  if discrete:
    return from_betas(np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64))
  t = np.linspace(0.0, 1.0, num_train_steps + 1)[1:]
  b0, b1 = beta_start * num_train_steps, beta_end * num_train_steps
  return from_alpha_bar(np.exp(-(b0 * t + 0.5 * (b1 - b0) * t ** 2)), discrete=False)


def scaled_linear_schedule(num_train_steps: int = 1000, beta_start: float = 0.00085,
                           beta_end: float = 0.012, *, discrete: bool = True) -> Schedule:
  """Stable Diffusion's betas: linear in sqrt(beta)."""
  betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_steps, dtype=np.float64) ** 2
  return from_betas(betas, discrete=discrete)


def cosine_schedule(num_train_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
                    *, discrete: bool = True) -> Schedule:
  """Nichol & Dhariwal's cosine schedule, alpha_bar(t) = cos^2(pi/2 (t + s) / (1 + s)) / f(0).

  Discrete: their betas, clipped at `max_beta` (diffusers "squaredcos_cap_v2"). Continuous:
  alpha_bar(t) sampled at the grid (alpha_bar(1) = 0 is floored as in zero-terminal SNR).
  """
  def f(t):
    return np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
  t = np.linspace(0.0, 1.0, num_train_steps + 1)
  if discrete:
    betas = np.minimum(1 - f(t[1:]) / f(t[:-1]), max_beta)
    return from_betas(betas)
  alpha_bar = np.clip(f(t[1:]) / f(0.0), 0.0, 1.0)
  alpha_bar[-1] = 0.0  # cos(pi/2) is ~1e-33 in float64, not 0
  return from_alpha_bar(alpha_bar, discrete=False)


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
  """Lin et al. 2023, Alg. 1: shift and scale sqrt(alpha_bar) so alpha(1) = 0 and alpha at the
  first grid step is unchanged. Samples must start from pure noise at t = 1 and the model
  must predict v or x0 (eps cannot be inverted at alpha = 0)."""
  alpha_bar = np.exp(np.asarray(schedule.log_alpha_bar, np.float64)[1:])
  root = np.sqrt(alpha_bar)
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  return from_alpha_bar(root ** 2, discrete=schedule.discrete)


def karras_sigmas(sigma_min, sigma_max, num: int, rho: float = 7.0):
  """Karras et al. 2022 eq. 5: `num` noise levels from sigma_max down to sigma_min, [num].

  sigma here is the VE noise level sigma(t) / alpha(t) (`Schedule.karras_sigma`).
  """
  if num < 1:
    raise ValueError(f"num must be >= 1, got {num}")
  sigma_min = jnp.asarray(sigma_min)
  sigma_max = jnp.asarray(sigma_max)
  if num == 1:
    return sigma_max[None]
  ramp = jnp.linspace(0.0, 1.0, num, dtype=jnp.result_type(sigma_min, jnp.float32))
  inv_min, inv_max = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (inv_max + ramp * (inv_min - inv_max)) ** rho
