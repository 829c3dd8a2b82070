"""Cross-modal retrieval recall (R@K) with several captions per image, computed on device.

Ranking convention (used by every function here): for one query, candidate `c` ranks above
the ground truth `g` when `score[c] > score[g]`, or when the scores are equal and `c < g`
(the order of a stable descending sort, `np.argsort(-score, kind="stable")`). The rank of
`g` is the number of candidates above it; a hit at K means rank < K.

- text->image: each caption has one ground-truth image.
- image->text: an image has several ground-truth captions; the best-ranked one counts
  (the COCO/Flickr convention). Images with no caption are left out of the i2t mean.

Return convention: a dict `{"i2t_r@1": ..., "t2i_r@1": ..., "i2t_r@5": ..., ...}` of float32
jnp scalars in [0, 1], one pair per K in `ks`.

Nothing here builds an [n_images, n_texts] array on the host: `retrieval_recall` works on a
similarity already on device, `retrieval_recall_from_embeddings` streams blocks of image rows
(peak memory O(block_size * n_texts)) and can shard the image axis over a mesh.
"""
from collections.abc import Sequence
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
  ks = tuple(int(k) for k in ks)
  if not ks or any(k < 1 for k in ks):
    raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}.")
  return ks


def _check_text_to_image(text_to_image, n_images: int, n_texts: int) -> jax.Array:
  if text_to_image.ndim != 1 or text_to_image.shape[0] != n_texts:
    raise ValueError(
        f"text_to_image must have shape [n_texts]=[{n_texts}], got {text_to_image.shape}.")
  if not jnp.issubdtype(text_to_image.dtype, jnp.integer):
    raise ValueError(f"text_to_image must be integer image indices, got {text_to_image.dtype}.")
  if not isinstance(text_to_image, jax.core.Tracer):
    values = np.asarray(text_to_image)
    if values.size and (values.min() < 0 or values.max() >= n_images):
      raise ValueError(
          f"text_to_image values must lie in [0, {n_images}), got range "
          f"[{values.min()}, {values.max()}].")
  return jnp.asarray(text_to_image, jnp.int32)


def _block_ranks(sim_block, image_ids, valid_rows, text_to_image, gt_text_score):
  """Ranks for one block of image rows.

  Args:
    sim_block: [Bi, T] similarities of Bi images to all T texts.
    image_ids: [Bi] global index of each row.
    valid_rows: [Bi] False for padding rows.
    text_to_image: [T] ground-truth image of each text.
    gt_text_score: [T] similarity of each text to its ground-truth image.

  Returns:
    i2t_rank: [Bi] rank of the best-ranked ground-truth caption of each image (T when the
      image has no caption).
    t2i_count: [T] number of images of this block ranked above each text's ground truth.
  """
  n_texts = sim_block.shape[1]
  text_ids = jnp.arange(n_texts, dtype=jnp.int32)
  is_gt = text_to_image[None, :] == image_ids[:, None]  # [Bi, T]
  best = jnp.max(jnp.where(is_gt, sim_block, -jnp.inf), axis=1, keepdims=True)
  best_id = jnp.min(jnp.where(is_gt & (sim_block == best), text_ids[None, :], n_texts),
                    axis=1, keepdims=True)
  above_best = (sim_block > best) | ((sim_block == best) & (text_ids[None, :] < best_id))
  i2t_rank = jnp.sum(above_best, axis=1, dtype=jnp.int32)
  i2t_rank = jnp.where(best_id[:, 0] < n_texts, i2t_rank, n_texts)

  gt_image = text_to_image[None, :]
  gt_score = gt_text_score[None, :]
  # The ground truth's own row is excluded explicitly so that a score recomputed with a
  # different rounding can never rank a candidate above itself.
  above_gt = ((sim_block > gt_score) | ((sim_block == gt_score) & (image_ids[:, None] < gt_image)))
  above_gt &= (image_ids[:, None] != gt_image) & valid_rows[:, None]
  t2i_count = jnp.sum(above_gt, axis=0, dtype=jnp.int32)
  return i2t_rank, t2i_count


def _recalls(i2t_rank, image_has_text, t2i_rank, ks):
  out = {}
  n_images_with_text = jnp.maximum(jnp.sum(image_has_text), 1)
  for k in ks:
    out[f"i2t_r@{k}"] = (jnp.sum((i2t_rank < k) & image_has_text) / n_images_with_text
                         ).astype(jnp.float32)
    out[f"t2i_r@{k}"] = jnp.mean(t2i_rank < k).astype(jnp.float32)
  return out


def retrieval_ranks(similarity: jax.Array, text_to_image: jax.Array,
                    block_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Ranks of the ground truth for both directions.

  Args:
    similarity: [n_images, n_texts] scores (higher = more similar).
    text_to_image: [n_texts] int, index of each text's image.
    block_size: image rows processed at once (None: all at once).

  Returns:
    i2t_rank: [n_images] int32, rank of each image's best-ranked caption (n_texts for an
      image without captions).
    t2i_rank: [n_texts] int32, rank of each text's image.
  """
  chex.assert_rank(similarity, 2)
  n_images, n_texts = similarity.shape
  text_to_image = _check_text_to_image(text_to_image, n_images, n_texts)
  return _ranks_from_similarity(similarity, text_to_image, block_size)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _ranks_from_similarity(similarity, text_to_image, block_size):
  n_images, n_texts = similarity.shape
  gt_text_score = similarity[text_to_image, jnp.arange(n_texts)]
  block = n_images if block_size is None else min(int(block_size), n_images)
  n_blocks = -(-n_images // block)
  padded = jnp.pad(similarity, ((0, n_blocks * block - n_images), (0, 0)))

  def step(t2i_count, b):
    image_ids = b * block + jnp.arange(block, dtype=jnp.int32)
    sim_block = jax.lax.dynamic_slice_in_dim(padded, b * block, block, axis=0)
    i2t_rank, count = _block_ranks(sim_block, image_ids, image_ids < n_images,
                                   text_to_image, gt_text_score)
    return t2i_count + count, i2t_rank

  t2i_rank, i2t_rank = jax.lax.scan(step, jnp.zeros(n_texts, jnp.int32),
                                    jnp.arange(n_blocks))
  return i2t_rank.reshape(-1)[:n_images], t2i_rank


def retrieval_recall(similarity: jax.Array, text_to_image: jax.Array,
                     ks: Sequence[int] = (1, 5, 10), block_size: int | None = None
                     ) -> dict[str, jax.Array]:
  """Image<->text recall at K from a similarity matrix already on device.

  Args:
    similarity: [n_images, n_texts] scores (higher = more similar).
    text_to_image: [n_texts] int, index of each text's ground-truth image.
    ks: the K values.
    block_size: image rows ranked at once; bounds the temporaries to
      O(block_size * n_texts). None ranks everything in one go.

  Returns:
    {"i2t_r@K": [], "t2i_r@K": []} for each K: float32 scalars in [0, 1].
  """
  ks = _check_ks(ks)
  i2t_rank, t2i_rank = retrieval_ranks(similarity, text_to_image, block_size)
  n_images = similarity.shape[0]
  has_text = jnp.zeros(n_images, bool).at[jnp.asarray(text_to_image)].set(True)
  return _recalls(i2t_rank, has_text, t2i_rank, ks)


def _embedding_ranks_local(image_emb, text_emb, text_to_image, gt_text_score, first_image,
                           n_images, block, init_count):
  """Scans blocks of local image rows; returns local i2t ranks and this shard's t2i counts."""
  n_local = image_emb.shape[0]
  n_blocks = n_local // block
  image_blocks = image_emb.reshape(n_blocks, block, image_emb.shape[1])

  def step(t2i_count, xs):
    b, image_block = xs
    image_ids = first_image + b * block + jnp.arange(block, dtype=jnp.int32)
    sim_block = jnp.einsum("id,td->it", image_block, text_emb, precision=_HIGHEST,
                           preferred_element_type=jnp.float32)
    i2t_rank, count = _block_ranks(sim_block, image_ids, image_ids < n_images,
                                   text_to_image, gt_text_score)
    return t2i_count + count, i2t_rank

  t2i_count, i2t_rank = jax.lax.scan(step, init_count, (jnp.arange(n_blocks), image_blocks))
  return i2t_rank.reshape(-1), t2i_count


def retrieval_recall_from_embeddings(image_emb: jax.Array, text_emb: jax.Array,
                                     text_to_image: jax.Array,
                                     ks: Sequence[int] = (1, 5, 10), block_size: int = 256,
                                     mesh: jax.sharding.Mesh | None = None,
                                     axis_name: str | tuple[str, ...] | None = None
                                     ) -> dict[str, jax.Array]:
  """R@K for similarity = image_emb @ text_emb.T without materialising it.

  Blocks of `block_size` image rows are scored against all texts in turn (lax.scan), so the
  peak extra memory is O(block_size * n_texts) per device. With `mesh`, the image axis is
  split over the mesh axes `axis_name` (default: all of them); each device ranks its images
  and the text->image counts are summed with psum.

  Scores are computed at `Precision.HIGHEST`; each text's ground-truth score is recomputed
  as a row-wise dot product, so candidates within a rounding error of a ground truth may be
  ordered differently from a matrix computed another way (exact ties are ordered as in the
  module docstring).

  Args:
    image_emb: [n_images, D].
    text_emb: [n_texts, D].
    text_to_image: [n_texts] int, index of each text's ground-truth image.
    ks: the K values.
    block_size: image rows per block.
    mesh: optional mesh to shard the image axis over.
    axis_name: mesh axis name(s) to shard over (default: every axis of `mesh`).

  Returns:
    {"i2t_r@K": [], "t2i_r@K": []} for each K: float32 scalars in [0, 1].
  """
  ks = _check_ks(ks)
  chex.assert_rank([image_emb, text_emb], 2)
  if image_emb.shape[1] != text_emb.shape[1]:
    raise ValueError(f"image_emb [n_images, D] and text_emb [n_texts, D] must share D, got "
                     f"{image_emb.shape} and {text_emb.shape}.")
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}.")
  n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
  text_to_image = _check_text_to_image(text_to_image, n_images, n_texts)
  if mesh is None:
    n_shards = 1
  else:
    if axis_name is None:
      axis_name = tuple(mesh.axis_names)
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    n_shards = int(np.prod([mesh.shape[a] for a in names]))
  block = min(block_size, -(-n_images // n_shards))
  per_shard = -(-n_images // (n_shards * block)) * block
  i2t_rank, t2i_rank = _embedding_ranks(image_emb, text_emb, text_to_image, block=block,
                                        per_shard=per_shard, mesh=mesh, axis_name=axis_name)
  has_text = jnp.zeros(n_images, bool).at[text_to_image].set(True)
  return _recalls(i2t_rank, has_text, t2i_rank, ks)


@functools.partial(jax.jit, static_argnames=("block", "per_shard", "mesh", "axis_name"))
def _embedding_ranks(image_emb, text_emb, text_to_image, *, block, per_shard, mesh, axis_name):
  n_images = image_emb.shape[0]
  n_texts = text_emb.shape[0]
  gt_text_score = jnp.einsum("td,td->t", image_emb[text_to_image], text_emb,
                             precision=_HIGHEST, preferred_element_type=jnp.float32)
  if mesh is None:
    padded = jnp.pad(image_emb, ((0, per_shard - n_images), (0, 0)))
    i2t_rank, t2i_rank = _embedding_ranks_local(padded, text_emb, text_to_image, gt_text_score,
                                                0, n_images, block, jnp.zeros(n_texts, jnp.int32))
    return i2t_rank[:n_images], t2i_rank

  P = jax.sharding.PartitionSpec
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  n_shards = int(np.prod([mesh.shape[a] for a in names]))
  padded = jnp.pad(image_emb, ((0, n_shards * per_shard - n_images), (0, 0)))

  def local(image_shard, text_emb, text_to_image, gt_text_score):
    first_image = jax.lax.axis_index(names) * per_shard
    # The scan carry accumulates per-device counts, so it must be typed as device-varying.
    init_count = jax.lax.pcast(jnp.zeros(n_texts, jnp.int32), names, to="varying")
    i2t_rank, t2i_count = _embedding_ranks_local(image_shard, text_emb, text_to_image,
                                                 gt_text_score, first_image, n_images, block,
                                                 init_count)
    return i2t_rank, jax.lax.psum(t2i_count, names)

  i2t_rank, t2i_rank = jax.shard_map(
      local, mesh=mesh, in_specs=(P(names), P(), P(), P()), out_specs=(P(names), P()),
  )(padded, text_emb, text_to_image, gt_text_score)
  return i2t_rank[:n_images], t2i_rank
