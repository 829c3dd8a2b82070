"""Constrained decoding to a closed set of sequences (e.g. VQA answers) as a prefix trie.

The trie is stored as arrays so it lives on device under jit: state `s` may be followed by the
tokens `child_tokens[s, :]` (padded with -1), leading to states `child_states[s, :]`. State 0
is a sink with no children (reached after EOS or after leaving the trie), state 1 the root.
Every candidate ends with EOS, so a decoder constrained to the trie can only emit a complete
candidate followed by EOS. The per-row decoding state is one int32 trie state, which beam
search reorders with the beams.
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SINK_STATE = 0
ROOT_STATE = 1


class PrefixTrie(NamedTuple):
  """A prefix trie over token sequences.

  Attributes:
    child_tokens: int32[S, F] allowed next tokens of each state, -1 padded (F = max fan-out).
    child_states: int32[S, F] the state each of those tokens leads to.
  """
  child_tokens: jax.Array
  child_states: jax.Array


def build_prefix_trie(sequences: Sequence[Sequence[int]], eos_id: int) -> PrefixTrie:
  """Builds the trie of `sequences`, each followed by `eos_id` (host-side, numpy).

  Args:
    sequences: candidate token sequences, e.g. the tokenised answer list of a VQA set. They
      must not contain `eos_id`; one may be a prefix of another ("red" and "red car").
    eos_id: the end-of-sequence token that closes every candidate.
  """
  if not sequences:
    raise ValueError("build_prefix_trie needs at least one candidate sequence, got none")
  children: list[dict[int, int]] = [{}, {}]  # sink, root
  for index, sequence in enumerate(sequences):
    tokens = [int(token) for token in sequence]
    if not tokens:
      raise ValueError(f"candidate sequence {index} is empty; every candidate needs >= 1 token")
    if eos_id in tokens or min(tokens) < 0:
      raise ValueError(
          f"candidate sequence {index} = {tokens} must hold token ids >= 0 without eos_id={eos_id}")
    state = ROOT_STATE
    for token in tokens:
      if token not in children[state]:
        children.append({})
        children[state][token] = len(children) - 1
      state = children[state][token]
    children[state][eos_id] = SINK_STATE
  fan_out = max(len(c) for c in children)
  child_tokens = np.full((len(children), fan_out), -1, np.int32)
  child_states = np.full((len(children), fan_out), SINK_STATE, np.int32)
  for state, edges in enumerate(children):
    for slot, (token, next_state) in enumerate(sorted(edges.items())):
      child_tokens[state, slot] = token
      child_states[state, slot] = next_state
  return PrefixTrie(jnp.asarray(child_tokens), jnp.asarray(child_states))


def initial_state(batch_size: int) -> jax.Array:
  """int32[B] root states."""
  return jnp.full((batch_size,), ROOT_STATE, jnp.int32)


def allowed_tokens(trie: PrefixTrie, state: jax.Array, vocab_size: int) -> jax.Array:
  """bool[B, V]: which tokens may follow each row's trie `state` int32[B]."""
  tokens = trie.child_tokens[state]  # [B, F]
  tokens = jnp.where(tokens < 0, vocab_size, tokens)  # Padding: out of range, dropped.
  rows = jnp.arange(state.shape[0])[:, None]
  allowed = jnp.zeros((state.shape[0], vocab_size), bool)
  return allowed.at[rows, tokens].set(True, mode="drop")


def mask_logits(trie: PrefixTrie, state: jax.Array, logits: jax.Array) -> jax.Array:
  """Sets logits `[B, V]` of tokens that leave the trie to -inf."""
  return jnp.where(allowed_tokens(trie, state, logits.shape[-1]), logits, -jnp.inf)


def advance(trie: PrefixTrie, state: jax.Array, token: jax.Array) -> jax.Array:
  """int32[B] next states after emitting `token` int32[B]; the sink if `token` is not allowed."""
  match = trie.child_tokens[state] == token[:, None]  # [B, F]
  return jnp.sum(jnp.where(match, trie.child_states[state], 0), axis=-1).astype(jnp.int32)
