"""Zero-shot classification with class prompts x templates (CLIP's recipe)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmjax import metrics
from mmjax.train import sharding
from mmjax.train.evaluators.chunked import check_batch_size, check_rows, predict_in_chunks


class ZeroShotEvaluator:
  """Top-1 accuracy of images against class embeddings built from prompts.

  A class embedding is the mean of its templates' text embeddings, renormalised. The model is
  seen through `embed_image(params, images [B, ...]) -> [B, E]` and `embed_text(params,
  tokens [B, L]) -> [B, E]` (both normalised, jittable).

  Metrics: `zeroshot_top1` over images of seen classes and `zeroshot_top1_heldout` over
  images of `heldout_classes`; each only when it has images.
  """

  def __init__(self, embed_image: Callable, embed_text: Callable, images: np.ndarray,
               labels: np.ndarray, prompt_tokens: np.ndarray, batch_size: int, *,
               heldout_classes: np.ndarray | None = None):
    """
    Args:
      images: host `[N, ...]`.
      labels: host int `[N]`, the class of each image in [0, C).
      prompt_tokens: host int `[C, T, L]`: template t of class c.
      batch_size: rows per device call.
      heldout_classes: host bool `[C]`, True for classes left out of training (None: none).
    """
    check_rows({"images": images, "labels": labels})
    prompt_tokens, labels = np.asarray(prompt_tokens), np.asarray(labels)
    if prompt_tokens.ndim != 3 or not np.issubdtype(prompt_tokens.dtype, np.integer):
      raise ValueError(f"prompt_tokens must be int [classes, templates, length], got "
                       f"{prompt_tokens.dtype} {prompt_tokens.shape}")
    num_classes = prompt_tokens.shape[0]
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
      raise ValueError(f"labels must be int [N], got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}) (the classes of prompt_tokens), "
                       f"got [{labels.min()}, {labels.max()}]")
    heldout = (np.zeros(num_classes, bool) if heldout_classes is None
               else np.asarray(heldout_classes))
    if heldout.shape != (num_classes,) or heldout.dtype != bool:
      raise ValueError(f"heldout_classes must be bool [C={num_classes}], got {heldout.dtype} "
                       f"{heldout.shape}")
    self.images, self.labels, self.prompt_tokens = images, labels, prompt_tokens
    self.heldout_classes = heldout
    self.batch_size = check_batch_size(batch_size)
    self._embed_image, self._embed_text = jax.jit(embed_image), jax.jit(embed_text)

  def embeddings(self, params: Any, mesh: Mesh) -> dict[str, Any]:
    """prompt_emb `[C, T, E]`, class_emb `[C, E]` (template mean, renormalised), image_emb
    `[N, E]` (all on device) and the host labels int `[N]`."""
    classes, templates, length = self.prompt_tokens.shape
    prompt_emb = predict_in_chunks(self._embed_text, params,
                                   (self.prompt_tokens.reshape(classes * templates, length),),
                                   mesh, self.batch_size, host=False)
    prompt_emb = prompt_emb.reshape(classes, templates, prompt_emb.shape[-1])
    class_emb = prompt_emb.mean(1)
    class_emb = class_emb / jnp.linalg.norm(class_emb, axis=-1, keepdims=True)
    image_emb = predict_in_chunks(self._embed_image, params, (self.images,), mesh,
                                  self.batch_size, host=False)
    return dict(prompt_emb=prompt_emb, class_emb=class_emb, image_emb=image_emb,
                labels=self.labels)

  def evaluate(self, params: Any, mesh: Mesh) -> dict[str, float]:
    embeddings = self.embeddings(params, mesh)
    # [N, C] is small: ranking it on the host spares compiling each eager op for the mesh.
    logits = sharding.to_host(embeddings["image_emb"] @ embeddings["class_emb"].T)
    is_heldout = self.heldout_classes[self.labels]
    results = {}
    for name, rows in (("zeroshot_top1", ~is_heldout), ("zeroshot_top1_heldout", is_heldout)):
      if rows.any():
        accuracy = metrics.zero_shot_accuracy(logits[np.flatnonzero(rows)], self.labels[rows],
                                              ks=(1,))
        results[name] = float(accuracy["top1"])
    return results
