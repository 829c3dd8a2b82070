"""The top-k candidates of each query embedding, on device, one block of queries at a time.

At most `[block_size, M]` scores exist at once (a `lax.map` over blocks of query rows), so N
queries against M candidates never materialise the `[N, M]` matrix; only `[N, k]` comes back.

Metrics:
  "cosine": cosine similarity (both sides L2-normalised here), higher is closer.
  "euclidean": L2 distance, lower is closer; computed as sqrt(|q|^2 + |c|^2 - 2 q.c) clipped
    at 0. On unit vectors it equals sqrt(2 - 2 cos), so it ranks exactly like cosine (up to
    float rounding of near ties): it differs only for embeddings that are not normalised.
Ties are broken towards the lower candidate index (`lax.top_k`'s order), as a stable sort would.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("cosine", "euclidean")
DEFAULT_BLOCK_SIZE = 1024
_HIGHEST = jax.lax.Precision.HIGHEST


def _check(queries, candidates, k: int, block_size: int) -> None:
  if np.ndim(queries) != 2 or np.ndim(candidates) != 2:
    raise ValueError(f"queries [N, E] and candidates [M, E] must be 2-D, got shapes "
                     f"{np.shape(queries)} and {np.shape(candidates)}")
  if np.shape(queries)[1] != np.shape(candidates)[1]:
    raise ValueError(f"queries [N, E] and candidates [M, E] must share E, got shapes "
                     f"{np.shape(queries)} and {np.shape(candidates)}")
  if not 1 <= k <= np.shape(candidates)[0]:
    raise ValueError(f"k must be in [1, {np.shape(candidates)[0]}] (the number of candidates), "
                     f"got {k}")
  if np.shape(queries)[0] < 1:
    raise ValueError("queries must hold at least one row, got 0")
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")


def _in_blocks(block_fn, queries: jax.Array, block_size: int):
  """`block_fn` over `[block, E]` row blocks of `queries` `[N, E]` (zero-padded), joined to N."""
  n = queries.shape[0]
  block = min(block_size, n)
  n_blocks = -(-n // block)
  padded = jnp.pad(queries, ((0, n_blocks * block - n), (0, 0)))
  outputs = jax.lax.map(block_fn, padded.reshape(n_blocks, block, queries.shape[1]))
  return jax.tree.map(lambda x: x.reshape((n_blocks * block,) + x.shape[2:])[:n], outputs)


def _unit(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


@functools.partial(jax.jit, static_argnames=("k", "metric", "block_size"))
def _top_k(queries, candidates, k, metric, block_size):
  queries, candidates = queries.astype(jnp.float32), candidates.astype(jnp.float32)
  if metric == "cosine":
    queries, candidates = _unit(queries), _unit(candidates)
  candidate_sq = jnp.sum(candidates * candidates, axis=-1)

  def block(query_block):
    dots = jnp.einsum("qe,me->qm", query_block, candidates, precision=_HIGHEST)
    if metric == "cosine":
      scores, indices = jax.lax.top_k(dots, k)
      return indices, scores
    squared = jnp.sum(query_block * query_block, axis=-1)[:, None] + candidate_sq[None] - 2 * dots
    negative, indices = jax.lax.top_k(-squared, k)
    return indices, jnp.sqrt(jnp.maximum(-negative, 0.0))

  return _in_blocks(block, queries, block_size)


def top_k_neighbours(queries, candidates, k: int, *, metric: str = "cosine",
                     block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """The `k` closest candidates of each query.

  Args:
    queries: float `[N, E]`.
    candidates: float `[M, E]`.
    k: neighbours per query, 1 <= k <= M.
    metric: "cosine" or "euclidean" (module docstring).
    block_size: query rows scored at once (peak scores `[block_size, M]`).

  Returns:
    indices: int32 `[N, k]` into the candidates, closest first;
    scores: float32 `[N, k]`, the cosine similarities (descending) or the distances (ascending).
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  _check(queries, candidates, k, block_size)
  indices, scores = _top_k(jnp.asarray(queries), jnp.asarray(candidates), int(k), metric,
                           int(block_size))
  return np.asarray(indices), np.asarray(scores)


@functools.partial(jax.jit, static_argnames=("k", "block_size"))
def _top_k_probabilities(image_emb, class_emb, logit_scale, k, block_size):
  def block(image_block):
    logits = logit_scale * jnp.einsum("ie,ce->ic", image_block, class_emb, precision=_HIGHEST)
    probs, indices = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
    return indices, probs

  return _in_blocks(block, image_emb.astype(jnp.float32), block_size)


def top_k_probabilities(image_emb, class_emb, logit_scale: float, k: int, *,
                        block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """CLIP's zero-shot class probabilities, the `k` most likely classes per image.

  Args:
    image_emb: float `[N, E]`, L2-normalised.
    class_emb: float `[C, E]`, L2-normalised class embeddings.
    logit_scale: the inverse temperature (CLIP's exp(logit_scale), at most 100).
    k: classes per image, 1 <= k <= C.

  Returns:
    indices: int32 `[N, k]` into the classes, most likely first;
    probs: float32 `[N, k]`: softmax over all C classes of `logit_scale * image_emb @ class_emb.T`.
  """
  _check(image_emb, class_emb, k, block_size)
  indices, probs = _top_k_probabilities(jnp.asarray(image_emb), jnp.asarray(class_emb, jnp.float32),
                                        jnp.float32(logit_scale), int(k), int(block_size))
  return np.asarray(indices), np.asarray(probs)
