"""R@K against a naive stable-argsort reference, including ties, blocking and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import metrics


def naive_recall(similarity, text_to_image, ks):
  """Full sort of every row/column; image->text takes the best-ranked ground-truth caption."""
  n_images, n_texts = similarity.shape
  out = {}
  i2t_ranks = []
  for i in range(n_images):
    gt = np.flatnonzero(text_to_image == i)
    if gt.size == 0:
      continue
    order = np.argsort(-similarity[i], kind="stable")
    i2t_ranks.append(np.flatnonzero(np.isin(order, gt)).min())
  t2i_ranks = []
  for j in range(n_texts):
    order = np.argsort(-similarity[:, j], kind="stable")
    t2i_ranks.append(np.flatnonzero(order == text_to_image[j])[0])
  for k in ks:
    out[f"i2t_r@{k}"] = np.mean(np.array(i2t_ranks) < k)
    out[f"t2i_r@{k}"] = np.mean(np.array(t2i_ranks) < k)
  return out


def _assert_same(got, want):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(float(got[key]), want[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("shape", [(13, 40), (3, 5)])
def test_recall_matches_naive_with_ties(shape):
  n_images, n_texts = shape
  ks = (1, 2, 5, 10)
  for seed in range(20):  # fixed shapes: one compile per block size
    rng = np.random.default_rng(seed)
    text_to_image = rng.integers(0, n_images, n_texts)  # some images get no caption
    # Few distinct values, so exact ties are frequent.
    similarity = rng.integers(-3, 4, (n_images, n_texts)).astype(np.float32)
    want = naive_recall(similarity, text_to_image, ks)
    for block_size in (None, 4):
      got = metrics.retrieval_recall(similarity, text_to_image, ks, block_size=block_size)
      _assert_same(got, want)


def test_five_captions_per_image_continuous_scores():
  rng = np.random.default_rng(0)
  n_images = 40
  text_to_image = np.repeat(np.arange(n_images), 5)
  image_emb = rng.normal(size=(n_images, 16)).astype(np.float32)
  text_emb = image_emb[text_to_image] + rng.normal(size=(5 * n_images, 16)).astype(np.float32)
  similarity = image_emb @ text_emb.T
  want = naive_recall(similarity, text_to_image, (1, 5, 10))
  got = jax.jit(metrics.retrieval_recall)(similarity, text_to_image)
  _assert_same(got, want)
  assert all(v.dtype == jnp.float32 and v.shape == () for v in got.values())


@pytest.mark.parametrize("block_size", [1, 7, 256])
def test_from_embeddings_equals_similarity_path(block_size):
  # Integer embeddings: every dot product is exact in float32, so ties are real ties and
  # both paths must agree bit for bit.
  rng = np.random.default_rng(1)
  n_images, n_texts = 23, 61
  image_emb = rng.integers(-2, 3, (n_images, 4)).astype(np.float32)
  text_emb = rng.integers(-2, 3, (n_texts, 4)).astype(np.float32)
  text_to_image = rng.integers(0, n_images, n_texts)
  want = naive_recall(image_emb @ text_emb.T, text_to_image, (1, 3, 10))
  got = metrics.retrieval_recall_from_embeddings(image_emb, text_emb, text_to_image,
                                                 ks=(1, 3, 10), block_size=block_size)
  _assert_same(got, want)


def test_from_embeddings_sharded_over_mesh():
  rng = np.random.default_rng(2)
  n_images, n_texts = 37, 150  # not a multiple of the 8 devices
  image_emb = rng.integers(-2, 3, (n_images, 5)).astype(np.float32)
  text_emb = rng.integers(-2, 3, (n_texts, 5)).astype(np.float32)
  text_to_image = rng.integers(0, n_images, n_texts)
  want = naive_recall(image_emb @ text_emb.T, text_to_image, (1, 5))
  devices = np.array(jax.devices()).reshape(2, -1)
  mesh = jax.sharding.Mesh(devices, ("data", "fsdp"))
  got = metrics.retrieval_recall_from_embeddings(image_emb, text_emb, text_to_image,
                                                 ks=(1, 5), block_size=2, mesh=mesh)
  _assert_same(got, want)


def test_perfect_and_worst_retrieval():
  text_to_image = np.repeat(np.arange(4), 2)
  perfect = (np.arange(4)[:, None] == text_to_image[None, :]).astype(np.float32)
  got = metrics.retrieval_recall(perfect, text_to_image, ks=(1,))
  assert float(got["i2t_r@1"]) == 1.0 and float(got["t2i_r@1"]) == 1.0
  got = metrics.retrieval_recall(-perfect, text_to_image, ks=(1,))
  assert float(got["i2t_r@1"]) == 0.0 and float(got["t2i_r@1"]) == 0.0


def test_bad_input_raises():
  similarity = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError, match="text_to_image"):
    metrics.retrieval_recall(similarity, np.array([0, 1, 2]))
  with pytest.raises(ValueError, match="text_to_image values"):
    metrics.retrieval_recall(similarity, np.array([0, 1, 2, 3]))
  with pytest.raises(ValueError, match="integer"):
    metrics.retrieval_recall(similarity, np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="ks"):
    metrics.retrieval_recall(similarity, np.zeros(4, np.int32), ks=(0,))
  with pytest.raises(ValueError, match="share D"):
    metrics.retrieval_recall_from_embeddings(np.zeros((3, 2)), np.zeros((4, 3)),
                                             np.zeros(4, np.int32))
