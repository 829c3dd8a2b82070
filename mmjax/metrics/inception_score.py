"""Inception Score with the original (improved-GAN) convention."""
import functools

import chex
import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("splits",))
def inception_score(logits: jax.Array, splits: int = 10) -> tuple[jax.Array, jax.Array]:
  """IS = exp(E_x KL(p(y|x) || p(y))), averaged over splits.

  As the original code: the N samples are cut into `splits` consecutive parts (no
  shuffling; part i is rows [i*N//splits, (i+1)*N//splits)), the score is computed per
  part, and the mean and the population standard deviation (np.std) over parts are
  returned. Computed in the dtype of `logits` (pass float64 under `jax.enable_x64` for
  float64 results).

  Args:
    logits: [N, C] classifier logits (the 1008 Inception logits for the standard IS).
    splits: number of parts.

  Returns:
    (mean, std): scalars.
  """
  chex.assert_rank(logits, 2)
  n = logits.shape[0]
  if splits < 1 or n < splits:
    raise ValueError(f"splits must be in [1, N={n}], got {splits}.")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    logits = logits.astype(jnp.float32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  scores = []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    log_marginal = jax.nn.logsumexp(part, axis=0) - jnp.log(part.shape[0])
    kl = jnp.sum(jnp.exp(part) * (part - log_marginal[None, :]), axis=1)
    scores.append(jnp.exp(jnp.mean(kl)))
  scores = jnp.stack(scores)
  return jnp.mean(scores), jnp.std(scores)
