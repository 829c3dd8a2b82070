"""Image<->text retrieval R@K, optionally with the top candidates re-ranked by a cross-encoder."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mmjax import metrics
from mmjax.train import sharding
from mmjax.train.evaluators.chunked import check_batch_size, check_rows, predict_in_chunks


class RetrievalEvaluator:
  """i2t / t2i R@K over a set of images with several captions each.

  The model is seen through `embed_image(params, images [B, ...]) -> [B, E]` and
  `embed_text(params, tokens [B, L]) -> [B, E]` (both normalised, jittable). With `rerank_k`
  > 0, each image's top-`rerank_k` texts by embedding similarity are re-scored by
  `rerank_fn(params, images [C, ...], candidate_tokens [C, K, L]) -> scores [C, K]` (BLIP's
  ITM head) and `i2t_r@1_itm` is the fraction of images whose best re-scored text is theirs
  (images without a caption left out, as for `i2t_r@K`).

  Metrics: `i2t_r@K`, `t2i_r@K` for K in `ks` (see `metrics.retrieval_recall`), and
  `i2t_r@1_itm` when re-ranking.
  """

  def __init__(self, embed_image: Callable, embed_text: Callable, images: np.ndarray,
               texts: np.ndarray, text_to_image: np.ndarray, batch_size: int, *,
               ks: Sequence[int] = (1, 5, 10), rerank_fn: Callable | None = None,
               rerank_k: int = 0):
    """
    Args:
      images: host `[N, ...]` (e.g. float32 `[N, H, W, 3]`).
      texts: host int `[T, L]` caption tokens.
      text_to_image: host int `[T]`, the image index in [0, N) of each caption.
      batch_size: rows per device call.
      ks: the K of R@K.
      rerank_fn, rerank_k: the re-ranker and how many candidates it scores (0 = off).
    """
    num_images = check_rows({"images": images})
    check_rows({"texts": texts, "text_to_image": text_to_image})
    text_to_image = np.asarray(text_to_image)
    if not np.issubdtype(text_to_image.dtype, np.integer) or text_to_image.ndim != 1:
      raise ValueError(f"text_to_image must be int [T], got {text_to_image.dtype} "
                       f"{text_to_image.shape}")
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
      raise ValueError(f"text_to_image must index the {num_images} images, got values in "
                       f"[{text_to_image.min()}, {text_to_image.max()}]")
    if rerank_k < 0:
      raise ValueError(f"rerank_k must be >= 0 (0 = no re-ranking), got {rerank_k}")
    if rerank_k and rerank_fn is None:
      raise ValueError(f"rerank_k={rerank_k} needs a rerank_fn(params, images, candidate_tokens)")
    self.images, self.texts, self.text_to_image = images, np.asarray(texts), text_to_image
    self.batch_size, self.ks = check_batch_size(batch_size), tuple(ks)
    self.rerank_k = int(rerank_k)
    self._embed_image, self._embed_text = jax.jit(embed_image), jax.jit(embed_text)
    self._rerank = jax.jit(rerank_fn) if rerank_fn is not None else None

  def embed_images(self, params: Any, images: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host images `[n, ...]` -> embeddings `[n, E]` on device."""
    return predict_in_chunks(self._embed_image, params, (images,), mesh, self.batch_size,
                             host=False)

  def embed_texts(self, params: Any, tokens: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host int tokens `[n, L]` -> embeddings `[n, E]` on device."""
    return predict_in_chunks(self._embed_text, params, (tokens,), mesh, self.batch_size,
                             host=False)

  def similarity(self, params: Any, mesh: Mesh) -> jax.Array:
    """Image-text similarity `[N, T]` of the evaluation set, on device."""
    image_emb = self.embed_images(params, self.images, mesh)
    return image_emb @ self.embed_texts(params, self.texts, mesh).T

  def evaluate(self, params: Any, mesh: Mesh) -> dict[str, float]:
    similarity = self.similarity(params, mesh)
    recalls = sharding.to_host(metrics.retrieval_recall(similarity, self.text_to_image,
                                                        ks=self.ks))
    results = {f"{direction}_r@{k}": float(recalls[f"{direction}_r@{k}"])
               for direction in ("i2t", "t2i") for k in self.ks}
    if self.rerank_k:
      results["i2t_r@1_itm"] = self._reranked_recall_at_1(params, similarity, mesh)
    return results

  def _reranked_recall_at_1(self, params: Any, similarity: jax.Array, mesh: Mesh) -> float:
    k = min(self.rerank_k, len(self.texts))
    candidates = sharding.to_host(jax.lax.top_k(similarity, k)[1])  # [N, K]
    scores = predict_in_chunks(self._rerank, params, (self.images, self.texts[candidates]),
                               mesh, self.batch_size)
    if scores.shape != candidates.shape:
      raise ValueError(f"rerank_fn must return scores [C, K] for candidate_tokens [C, K, L]; "
                       f"got {scores.shape} for {candidates.shape} candidates")
    best = candidates[np.arange(len(candidates)), scores.argmax(1)]
    hits = self.text_to_image[best] == np.arange(len(candidates))
    # As in `metrics.retrieval_recall`: images without a caption are left out of the mean.
    has_text = np.zeros(len(candidates), bool)
    has_text[self.text_to_image] = True
    return float(np.mean(hits[has_text]))
