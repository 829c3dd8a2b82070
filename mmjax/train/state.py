"""The training state pytree saved in checkpoints."""
from typing import Any

import flax.struct
import jax


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
