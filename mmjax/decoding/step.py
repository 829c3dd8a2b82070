"""The decoder interface shared by every decoding function: prefill, row expansion, outputs.

A decoder is a `step_fn(tokens, cache, positions) -> (logits, cache)` (see the package
docstring for the full contract). This file holds the few helpers that talk to it directly.
"""
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

PyTree = Any
# step_fn(tokens int32[B, T], cache, positions int32[B, T]) -> (logits float32[B, T, V], cache)
StepFn = Callable[[jax.Array, PyTree, jax.Array], tuple[jax.Array, PyTree]]


class DecodeOutput(NamedTuple):
  """What every decoding function returns.

  Attributes:
    tokens: int32[..., N] generated tokens (prompt not included), `pad_id` after EOS.
    lengths: int32[...] number of generated tokens, counting the EOS token when there is one.
    scores: float32[...] per-sequence score; each decoding function states which score.
  """
  tokens: jax.Array
  lengths: jax.Array
  scores: jax.Array


def check_prompt(prompt: jax.Array, prompt_lengths: jax.Array | None) -> jax.Array:
  """Validates a right-padded prompt batch; returns `prompt_lengths` as int32[B].

  Args:
    prompt: int32[B, P] prompt tokens, right-padded (row b is valid on `[0, prompt_lengths[b])`).
    prompt_lengths: int32[B] number of valid tokens per row (each >= 1), or None for all P.
  """
  if prompt.ndim != 2:
    raise ValueError(f"prompt must be int[B, P] (right-padded token ids), got shape {prompt.shape}")
  if not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
  batch, prompt_len = prompt.shape
  if prompt_len < 1:
    raise ValueError("prompt must hold at least one token per row (e.g. BOS), got P=0")
  if prompt_lengths is None:
    return jnp.full((batch,), prompt_len, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths)
  if prompt_lengths.shape != (batch,):
    raise ValueError(
        f"prompt_lengths must be int[B] with B={batch} (the prompt's batch), got shape "
        f"{prompt_lengths.shape}")
  return prompt_lengths.astype(jnp.int32)


def check_positive(name: str, value, allow_none: bool = False, integer: bool = False) -> None:
  """Raises ValueError unless the static hyper-parameter `value` is > 0."""
  if value is None and allow_none:
    return
  if value is None or (integer and int(value) != value) or not value > 0:
    kind = "a positive integer" if integer else "> 0"
    raise ValueError(f"{name} must be {kind}, got {value!r}")


def call_step(step_fn: StepFn, tokens, cache, positions):
  """Calls `step_fn` and checks that it returned logits `[B, T, V]`."""
  logits, cache = step_fn(tokens, cache, positions)
  if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
    raise ValueError(
        f"step_fn must return logits [B, T, V] for tokens of shape {tokens.shape}, got logits of "
        f"shape {logits.shape}")
  return logits, cache


def prefill(step_fn: StepFn, cache: PyTree, prompt: jax.Array,
            prompt_lengths: jax.Array) -> tuple[jax.Array, PyTree]:
  """Runs the whole prompt through the decoder once.

  Args:
    step_fn: the decoder step.
    cache: the decoder's empty cache for B rows.
    prompt: int32[B, P] right-padded prompt.
    prompt_lengths: int32[B] valid tokens per row.

  Returns:
    (logits float32[B, V] at each row's last prompt token, cache holding positions [0, P)).
    Positions at and beyond `prompt_lengths[b]` hold padding; they are overwritten by the
    generated tokens before any query can attend to them (causal mask by position).
  """
  batch, prompt_len = prompt.shape
  positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
  logits, cache = call_step(step_fn, prompt, cache, positions)
  last = jnp.clip(prompt_lengths - 1, 0, prompt_len - 1)
  last_logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
  return last_logits.astype(jnp.float32), cache


@runtime_checkable
class RowsOwner(Protocol):
  """A cache node that lays out its rows itself (e.g. `mmjax.nn.kv_cache.SlotKVCache`, whose
  beams share K/V slots): `expand_rows` and `gather_rows` call its methods instead of
  touching its arrays."""

  def expand_rows(self, times: int, share: bool = False) -> Any: ...

  def gather_rows(self, rows: jax.Array, group_size: int | None = None) -> Any: ...


def _map_batched(fn, node_fn, tree: PyTree) -> PyTree:
  def apply(leaf):
    if isinstance(leaf, RowsOwner):
      return node_fn(leaf)
    leaf = jnp.asarray(leaf)
    if leaf.ndim == 0:
      return leaf  # A scalar (e.g. a shared cache index) is shared by all rows.
    return fn(leaf)
  return jax.tree.map(apply, tree, is_leaf=lambda x: isinstance(x, RowsOwner))


def expand_rows(tree: PyTree, times: int, share: bool = False) -> PyTree:
  """Repeats each row `times` times along axis 0: `[B, ...] -> [B * times, ...]`.

  Rows of one example stay adjacent (row b becomes rows b*times ... b*times + times-1), the
  layout beam search and `num_return_sequences` rely on. 0-d leaves are shared, not repeated.
  `share=True` (beam search) tells caches whose rows can share slots (`RowsOwner`) that the
  copies will be reordered among themselves (`gather_rows(..., group_size=times)`).
  """
  return _map_batched(lambda leaf: jnp.repeat(leaf, times, axis=0),
                      lambda node: node.expand_rows(times, share), tree)


def gather_rows(tree: PyTree, rows: jax.Array, group_size: int | None = None) -> PyTree:
  """Selects rows `rows` int32[R] along axis 0 of every leaf (beam reordering).

  `group_size` k, when given, promises that each `rows[r]` lies in r's own group of k adjacent
  rows (beam search reorders the k beams of a prompt among themselves); a cache whose rows
  share slots (`RowsOwner`) then moves only its slot table, not its K/V.
  """
  return _map_batched(lambda leaf: jnp.take(leaf, rows, axis=0),
                      lambda node: node.gather_rows(rows, group_size), tree)


def banned_tokens_step_fn(step_fn: StepFn, start: int, stop: int | None = None) -> StepFn:
  """`step_fn` with the logits of token ids [start, stop) set to -inf (stop None: to the end of
  the vocabulary), so no decoding function ever chooses them: e.g. a multi-task model's
  location bins while it captions, or Flamingo's `<image>` token."""
  def step(tokens, cache, positions):
    logits, cache = step_fn(tokens, cache, positions)
    return logits.at[..., start:stop].set(-jnp.inf), cache
  return step
