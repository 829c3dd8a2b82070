"""Logits processors: pure `[B, V] -> [B, V]` transforms applied before choosing a token.

Order used by the decoding loops (as in transformers): repetition penalty, EOS suppression
(min length), constraint mask, then the sampling warpers temperature, top-k, top-p. Masked
entries are set to -inf.
"""
import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """CTRL / transformers repetition penalty on tokens already in the sequence.

  A seen token's logit is divided by `penalty` when positive and multiplied by it when
  negative, so `penalty > 1` always makes repeats less likely.

  Args:
    logits: float[B, V].
    seen: bool[B, V], True for tokens present in the prompt or generated so far.
    penalty: > 0; 1 leaves logits unchanged.
  """
  penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
  return jnp.where(seen, penalised, logits)


def mark_seen(seen: jax.Array, tokens: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Sets `seen[b, tokens[b, t]] = True` for valid entries.

  Args:
    seen: bool[B, V].
    tokens: int[B, T].
    valid: bool[B, T] or None (all valid).
  """
  vocab_size = seen.shape[-1]
  if valid is not None:
    tokens = jnp.where(valid, tokens, vocab_size)  # Out of range: dropped by the scatter.
  rows = jnp.arange(seen.shape[0])[:, None]
  return seen.at[rows, tokens].set(True, mode="drop")


def suppress_token(logits: jax.Array, token_id: int, suppress: jax.Array) -> jax.Array:
  """Sets `logits[b, token_id] = -inf` where `suppress` (bool scalar or [B]) is True."""
  suppress = jnp.broadcast_to(suppress, logits.shape[:1])
  column = logits[:, token_id]
  return logits.at[:, token_id].set(jnp.where(suppress, NEG_INF, column))


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
  """Divides logits by `temperature` (> 0; < 1 sharpens, > 1 flattens)."""
  return logits / temperature


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the `k` largest logits per row (ties with the k-th are kept); masks the rest."""
  k = min(int(k), logits.shape[-1])
  kth_largest = jax.lax.top_k(logits, k)[0][:, -1:]
  return jnp.where(logits < kth_largest, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose mass reaches `p`.

  A token is kept when the probability mass of the tokens ranked strictly above it is below
  `p`, so the most likely token is always kept and a tiny `p` reduces to greedy.

  Args:
    logits: float[B, V].
    p: in (0, 1].
  """
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  keep_sorted = mass_above < p
  keep_sorted = keep_sorted.at[:, 0].set(True)
  rows = jnp.arange(logits.shape[0])[:, None]
  keep = jnp.zeros_like(keep_sorted).at[rows, order].set(keep_sorted)
  return jnp.where(keep, logits, NEG_INF)
