"""A tiny decoder-only transformer in plain jax.numpy for the decoding tests.

Two independent code paths: `forward` (full causal pass, no cache) and `make_step_fn`
(fixed-size KV cache written at per-row positions). A per-row conditioning vector `cond`
[B, D] is added to every token embedding; it lives in the cache, as image embeddings would.
"""
import functools

import numpy as np

import jax
import jax.numpy as jnp

EOS = 1
PAD = 0
NUM_HEADS = 2
# Tests compile many small programs on a shared CPU; skipping XLA's backend optimisations
# halves compile time and changes no result they check.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def init_params(seed: int, vocab_size: int, max_length: int = 16, dim: int = 16,
                num_layers: int = 1, logit_scale: float = 2.0,
                eos_bias: float = 0.0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0: jnp.asarray(
      rng.normal(size=shape) * scale / np.sqrt(shape[0]), jnp.float32)
  layers = []
  for _ in range(num_layers):
    layers.append(dict(
        wq=normal(dim, dim), wk=normal(dim, dim), wv=normal(dim, dim), wo=normal(dim, dim),
        w1=normal(dim, 2 * dim), w2=normal(2 * dim, dim)))
  out_bias = np.zeros(vocab_size, np.float32)
  out_bias[EOS] = eos_bias
  return dict(
      embed=jnp.asarray(rng.normal(size=(vocab_size, dim)), jnp.float32),
      pos=jnp.asarray(rng.normal(size=(max_length, dim)) * 0.5, jnp.float32),
      layers=layers, out=normal(dim, vocab_size, scale=logit_scale),
      out_bias=jnp.asarray(out_bias))


def _norm(x):
  return (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)


def _heads(x, num_heads):
  return x.reshape(x.shape[:2] + (num_heads, x.shape[-1] // num_heads))


def _attend(q, k, v, mask):
  """q [B, T, H, Dh], k/v [B, S, H, Dh], mask bool[B, T, S] -> [B, T, H * Dh]."""
  logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = jnp.where(mask[:, None], logits, -1e30)
  out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)
  return out.reshape(out.shape[:2] + (-1,))


def forward(params, tokens, cond):
  """Uncached causal forward: tokens int[B, L], cond [B, D] -> logits [B, L, V]."""
  length = tokens.shape[1]
  x = params["embed"][tokens] + params["pos"][:length][None] + cond[:, None]
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)),
                          (tokens.shape[0], length, length))
  heads = NUM_HEADS
  for layer in params["layers"]:
    h = _norm(x)
    q, k, v = (_heads(h @ layer[w], heads) for w in ("wq", "wk", "wv"))
    x = x + _attend(q, k, v, mask) @ layer["wo"]
    x = x + jax.nn.gelu(_norm(x) @ layer["w1"]) @ layer["w2"]
  return _norm(x) @ params["out"] + params["out_bias"]


def init_cache(params, batch_size: int, max_length: int, cond):
  """Empty KV cache for `batch_size` rows; `cond` [B, D] is the per-row conditioning."""
  dim = params["embed"].shape[1]
  heads = NUM_HEADS
  shape = (batch_size, max_length, heads, dim // heads)
  return dict(
      keys=[jnp.zeros(shape) for _ in params["layers"]],
      values=[jnp.zeros(shape) for _ in params["layers"]],
      cond=jnp.asarray(cond, jnp.float32),
      calls=jnp.zeros((batch_size,), jnp.int32))


def make_step_fn(params):
  """step_fn(tokens [B, T], cache, positions [B, T]) -> (logits [B, T, V], cache)."""
  heads = NUM_HEADS

  def step_fn(tokens, cache, positions):
    rows = jnp.arange(tokens.shape[0])[:, None]
    x = params["embed"][tokens] + params["pos"][positions] + cache["cond"][:, None]
    max_length = cache["keys"][0].shape[1]
    mask = jnp.arange(max_length)[None, None, :] <= positions[:, :, None]  # [B, T, S]
    new_keys, new_values = [], []
    for layer, k_cache, v_cache in zip(params["layers"], cache["keys"], cache["values"]):
      h = _norm(x)
      q, k, v = (_heads(h @ layer[w], heads) for w in ("wq", "wk", "wv"))
      k_cache = k_cache.at[rows, positions].set(k)
      v_cache = v_cache.at[rows, positions].set(v)
      new_keys.append(k_cache)
      new_values.append(v_cache)
      x = x + _attend(q, k_cache, v_cache, mask) @ layer["wo"]
      x = x + jax.nn.gelu(_norm(x) @ layer["w1"]) @ layer["w2"]
    logits = _norm(x) @ params["out"] + params["out_bias"]
    return logits, dict(keys=new_keys, values=new_values, cond=cache["cond"],
                        calls=cache["calls"] + 1)

  return step_fn


REFERENCE_LENGTH = 12


_forward_jit = fast_jit(forward)


@fast_jit
def _forward_log_probs(params, tokens, cond):
  return jax.nn.log_softmax(forward(params, tokens, cond), axis=-1)


def forward_one(params, sequence, cond):
  """Uncached logits [len(sequence), V] of one sequence (padded to REFERENCE_LENGTH inside)."""
  tokens = np.zeros((1, REFERENCE_LENGTH), np.int32)
  tokens[0, :len(sequence)] = sequence
  logits = _forward_jit(params, jnp.asarray(tokens), jnp.asarray(cond, jnp.float32)[None])
  return np.asarray(logits[0, :len(sequence)])


def reference_log_probs(params, prompt, prompt_length, continuations, cond):
  """Per-token log-probs [S, T] of `continuations` int[S, T] after prompt[:prompt_length].

  Uses the uncached `forward` on sequences right-padded to REFERENCE_LENGTH (causal, so the
  padding changes nothing) so that one compiled program serves every test.
  """
  continuations = np.asarray(continuations).reshape(-1, np.shape(continuations)[-1])
  count, steps = continuations.shape
  tokens = np.zeros((count, REFERENCE_LENGTH), np.int32)
  tokens[:, :prompt_length] = np.asarray(prompt)[:prompt_length]
  tokens[:, prompt_length:prompt_length + steps] = continuations
  conds = jnp.broadcast_to(jnp.asarray(cond, jnp.float32), (count, np.shape(cond)[-1]))
  log_probs = np.asarray(_forward_log_probs(params, jnp.asarray(tokens), conds), np.float64)
  at = prompt_length - 1 + np.arange(steps)
  return log_probs[np.arange(count)[:, None], at[None, :], continuations]


def sequence_log_probs_reference(params, prompt, prompt_length, continuation, cond):
  """Per-token log-probs [T] of one `continuation` after prompt[:prompt_length]."""
  return reference_log_probs(params, prompt, prompt_length, np.asarray(continuation)[None],
                             cond)[0]


def reference_greedy(params, prompt, prompt_length, cond, steps, repetition_penalty=None,
                     min_new_tokens=0):
  """Naive greedy over the uncached forward (full recompute per token), numpy bookkeeping."""
  sequence = list(np.asarray(prompt)[:prompt_length])
  generated = []
  for t in range(steps):
    logits = forward_one(params, sequence, cond)[-1].copy()
    if repetition_penalty is not None:
      for token in set(sequence):
        logits[token] = (logits[token] / repetition_penalty if logits[token] > 0
                         else logits[token] * repetition_penalty)
    if t < min_new_tokens:
      logits[EOS] = -np.inf
    token = int(np.argmax(logits))
    generated.append(token)
    sequence.append(token)
    if token == EOS:
      break
  return generated
