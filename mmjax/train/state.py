"""The training state pytree saved in checkpoints, and its sharded construction."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.train import sharding


@flax.struct.dataclass
class TrainState:
  """step `[]` int32; params and opt_state pytrees; rng `[2]` uint32 (raw key data).

  The per-step key is `fold_in(rng, step)`, so the stream of keys depends only on the seed and
  the step, and a resumed run draws exactly the keys an uninterrupted run would.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def build_state(task, tx, config, mesh):
  """(jitted sharded init function, abstract state with shardings, state shardings).

  The optimizer state is initialised from the logically partitioned params, so each Adam
  moment carries its parameter's logical axes and gets exactly its parameter's sharding.
  """
  def init_state(rng):
    params = task.init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(rng))

  rng = jax.random.key(config.seed)
  boxed = jax.eval_shape(init_state, rng)
  state_shardings = sharding.logical_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.unbox(boxed), state_shardings)
  init = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=state_shardings)
  return (lambda: init(rng)), abstract, state_shardings
