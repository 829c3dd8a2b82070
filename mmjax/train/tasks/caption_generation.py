"""Caption generation shared by the tasks that caption images (captioning, BLIP)."""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from mmjax.train import sharding


class CaptionGeneration:
  """Mixin: `generate_captions` over the task's `_generate(params, images [B, H, W, 3]) ->
  tokens int32 [B, T]` (jittable; EOS then padding). The task provides `_jitted` (a dict of
  compiled functions), `tokenizer` and `config.eval.batch_size` (images per call)."""

  def generate_captions(self, params, images: np.ndarray, mesh: Mesh) -> list[str]:
    """Decoded captions (N str) of host images float32 `[N, H, W, 3]` in [0, 1]."""
    if "generate" not in self._jitted:
      self._jitted["generate"] = jax.jit(self._generate)
    fn = functools.partial(self._jitted["generate"], params)
    chunks = sharding.map_in_chunks(fn, (images,), mesh, self.config.eval.batch_size)
    return self.tokenizer.decode_batch(np.concatenate([out[:count] for count, out in chunks]))
