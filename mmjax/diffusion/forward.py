"""The forward (noising) process and the denoising training losses."""
import jax
import jax.numpy as jnp

from mmjax.diffusion import parameterization
from mmjax.diffusion.parameterization import expand_to
from mmjax.diffusion.schedules import Schedule


def q_sample(schedule: Schedule, x0, t, noise):
  """x_t = alpha(t) x0 + sigma(t) noise.

  Args:
    x0: [B, ...] clean data; noise: [B, ...] standard normal; t: [B] times in [0, 1].
  Returns:
    x_t [B, ...] in the promoted dtype of x0 and the schedule (at least float32).
  """
  x0, noise, t = jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t)
  if x0.shape != noise.shape:
    raise ValueError(f"x0 {x0.shape} and noise {noise.shape} must have the same shape")
  if t.shape != x0.shape[:1]:
    raise ValueError(f"t must be [B] = {x0.shape[:1]}, got {t.shape}")
  dtype = jnp.result_type(x0.dtype, schedule.dtype)
  alpha, sigma = schedule.alpha_sigma(t)
  return (expand_to(alpha, x0).astype(dtype) * x0.astype(dtype)
          + expand_to(sigma, x0).astype(dtype) * noise.astype(dtype))


def sample_train_times(key, batch_size: int, schedule: Schedule, max_time: float = 1.0):
  """Training times [B]: uniform over the T grid times (n + 1) / T <= max_time of a discrete
  schedule, uniform in (0, max_time] for a continuous one.

  max_time < 1 trains only the low-noise end of the schedule, as SDXL's refiner (which only
  ever sees partly noised images in img2img). A Python float in (0, 1]; on a discrete
  schedule at least the first grid time 1 / T is kept.
  """
  if not 0.0 < max_time <= 1.0:
    raise ValueError(f"max_time must be in (0, 1], got {max_time}")
  if schedule.discrete:
    # The epsilon keeps e.g. 0.3 * 1000 = 299.99999... on grid time 300.
    count = max(1, int(max_time * schedule.num_train_steps + 1e-6))
    index = jax.random.randint(key, (batch_size,), 0, count)
    return schedule.time_from_index(index)
  u = jax.random.uniform(key, (batch_size,), schedule.dtype)
  return max_time * (1.0 - u)  # (0, max_time]: t = 0 has infinite SNR, no training signal


def min_snr_weight(log_snr, prediction: str, gamma: float = 5.0):
  """Min-SNR-gamma weights (Hang et al. 2023) for the MSE in `prediction` space, [B].

  They make the effective x0-space weight min(SNR, gamma) whatever the output type:
  eps-MSE = SNR * x0-MSE and v-MSE = (SNR + 1) * x0-MSE for a VP schedule.
  """
  parameterization.check_prediction(prediction)
  snr = jnp.exp(2.0 * log_snr)
  clipped = jnp.minimum(snr, gamma)
  if prediction == "x0":
    return clipped
  if prediction == "eps":
    return clipped / snr
  return clipped / (snr + 1.0)


def denoising_loss(output, x0, noise, t, schedule: Schedule, *, prediction: str = "eps",
                   min_snr_gamma: float | None = None, reduce: bool = True):
  """Mean squared error of a model output against its target (eps, x0 or v).

  Args:
    output: [B, ...] the model output at x_t = q_sample(schedule, x0, t, noise).
    x0, noise: [B, ...]; t: [B].
    prediction: the output type.
    min_snr_gamma: if set, weight each example by `min_snr_weight` (gamma 5 in the paper).
    reduce: mean over the batch (scalar) if True, else per-example losses [B].
  Returns:
    the loss in float32 (or the schedule's float64).
  """
  parameterization.check_prediction(prediction)
  output, x0, noise = jnp.asarray(output), jnp.asarray(x0), jnp.asarray(noise)
  if not output.shape == x0.shape == noise.shape:
    raise ValueError(f"output {output.shape}, x0 {x0.shape} and noise {noise.shape} must have "
                     "the same shape [B, ...]")
  dtype = jnp.result_type(output.dtype, schedule.dtype)
  alpha, sigma = schedule.alpha_sigma(t)
  target = parameterization.output_from_x0_eps(
      x0.astype(dtype), noise.astype(dtype), expand_to(alpha, x0), expand_to(sigma, x0),
      prediction)
  per_example = jnp.mean(
      jnp.square(output.astype(dtype) - target).reshape(x0.shape[0], -1), axis=-1)
  if min_snr_gamma is not None:
    per_example = per_example * min_snr_weight(schedule.log_snr(t), prediction, min_snr_gamma)
  return jnp.mean(per_example) if reduce else per_example


def training_loss(denoise_fn, key, x0, schedule: Schedule, *, prediction: str = "eps",
                  cond: dict | None = None, min_snr_gamma: float | None = None):
  """One denoising-loss evaluation: draw t and noise, noise x0, call the model, MSE.

  `denoise_fn(x_t [B, ...], t [B], **cond) -> output [B, ...]`. Returns a scalar loss.
  """
  x0 = jnp.asarray(x0)
  time_key, noise_key = jax.random.split(key)
  t = sample_train_times(time_key, x0.shape[0], schedule)
  noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
  x_t = q_sample(schedule, x0, t, noise)
  output = denoise_fn(x_t, t, **(cond or {}))
  return denoising_loss(output, x0, noise, t, schedule, prediction=prediction,
                        min_snr_gamma=min_snr_gamma)


def drop_condition(key, cond, null_cond, drop_prob):
  """Condition dropout for classifier-free guidance training.

  Each example's conditioning is replaced by the null conditioning with probability
  `drop_prob` (the same draw for every leaf of the example).

  Args:
    cond: pytree of arrays with a leading batch axis [B, ...].
    null_cond: pytree of the same structure; leaves broadcastable to cond's ([...] or [1, ...]).
    drop_prob: scalar in [0, 1] (may be traced).
  Returns:
    (cond with dropped rows replaced, keep mask [B] bool).
  """
  leaves = jax.tree_util.tree_leaves(cond)
  if not leaves:
    raise ValueError("cond has no arrays to drop")
  batch = leaves[0].shape[0]
  if jax.tree_util.tree_structure(cond) != jax.tree_util.tree_structure(null_cond):
    raise ValueError("null_cond must have the same pytree structure as cond, got "
                     f"{jax.tree_util.tree_structure(null_cond)} vs "
                     f"{jax.tree_util.tree_structure(cond)}")
  keep = jax.random.uniform(key, (batch,)) >= drop_prob

  def choose(c, n):
    n = jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)
    return jnp.where(expand_to(keep, c), c, n)

  return jax.tree_util.tree_map(choose, cond, null_cond), keep
