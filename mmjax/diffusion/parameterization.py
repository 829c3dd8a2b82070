"""Model output types eps, x0 and v, and the conversions between them.

With x_t = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1) and v = alpha eps - sigma x0
(Salimans & Ho 2022), every output type determines x0 given x_t, so samplers see x0 only.
`alpha` and `sigma` broadcast against x (scalars, or [B, 1, ..., 1]).
"""
import jax.numpy as jnp

PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction type {prediction!r}, expected one of {PREDICTIONS}")


def x0_from_output(output, x_t, alpha, sigma, prediction: str):
  """The x0 estimate implied by a model output of type `prediction`, shaped like x_t."""
  check_prediction(prediction)
  if prediction == "x0":
    return output
  if prediction == "eps":
    return (x_t - sigma * output) / alpha
  return alpha * x_t - sigma * output


def eps_from_output(output, x_t, alpha, sigma, prediction: str):
  """The eps estimate implied by a model output of type `prediction`, shaped like x_t."""
  check_prediction(prediction)
  if prediction == "eps":
    return output
  if prediction == "x0":
    return (x_t - alpha * output) / sigma
  return sigma * x_t + alpha * output


def output_from_x0_eps(x0, eps, alpha, sigma, prediction: str):
  """The regression target of type `prediction` for a pair (x0, eps)."""
  check_prediction(prediction)
  if prediction == "x0":
    return x0
  if prediction == "eps":
    return eps
  return alpha * eps - sigma * x0


def convert_output(output, x_t, alpha, sigma, source: str, target: str):
  """Re-expresses a model output of type `source` as type `target`."""
  check_prediction(source)
  check_prediction(target)
  if source == target:
    return output
  x0 = x0_from_output(output, x_t, alpha, sigma, source)
  eps = eps_from_output(output, x_t, alpha, sigma, source)
  return output_from_x0_eps(x0, eps, alpha, sigma, target)


def expand_to(values, x):
  """[B] (or scalar) -> [B, 1, ..., 1] broadcastable against x [B, ...]."""
  values = jnp.asarray(values)
  if values.ndim == 0:
    return values
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))
