"""RetrievalEvaluator against a naive per-query ranking loop in numpy.

The towers are integer-valued linear maps, so every similarity is an exact integer in float32:
ties are frequent and the comparison is exact. 13 images (some without captions), batch_size 3
on 8 devices (chunks of 8) and on 1: the last chunk is part padding, which must not reach the
metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import sharding
from mmjax.train.evaluators import RetrievalEvaluator

NUM_IMAGES, LENGTH, VOCAB, EMBED = 13, 5, 7, 3
KS = (1, 2, 5)
RERANK_K = 4


def _meshes():
  return {"8 devices": sharding.make_mesh({"data": 2, "fsdp": 4}),
          "1 device": sharding.make_mesh({}, jax.devices()[:1])}


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(3)
  images = rng.integers(0, 2, (NUM_IMAGES, 2, 2, 3)).astype(np.float32)
  counts = rng.integers(0, 5, NUM_IMAGES)
  counts[[2, 7]] = 0  # images with no caption leave the i2t means
  text_to_image = rng.permutation(np.repeat(np.arange(NUM_IMAGES), counts)).astype(np.int32)
  texts = rng.integers(1, VOCAB, (len(text_to_image), LENGTH)).astype(np.int32)
  texts[:, 3:] *= rng.integers(0, 2, (len(texts), 1))  # some padded (id 0) tails
  params = {"image": rng.integers(-1, 2, (12, EMBED)).astype(np.float32),
            "table": rng.integers(-1, 2, (VOCAB, EMBED)).astype(np.float32),
            "rerank": rng.integers(-2, 3, (LENGTH,)).astype(np.float32),
            "rerank_image": rng.integers(-1, 2, (12,)).astype(np.float32)}
  return images, texts, text_to_image, params


def embed_image(params, images):
  return images.reshape(len(images), -1) @ params["image"]


def embed_text(params, tokens):
  return (params["table"][tokens] * (tokens != 0)[..., None]).sum(1)


def rerank(params, images, candidates):
  """scores [C, K]: a token score plus an image-dependent bonus on the first word."""
  image_term = images.reshape(len(images), -1) @ params["rerank_image"]
  return (candidates @ params["rerank"] + image_term[:, None] * candidates[:, :, 1]
          ).astype(jnp.float32)


def _naive_similarity(images, texts, params):
  image_emb = images.reshape(len(images), -1).astype(np.float64) @ params["image"]
  text_emb = np.stack([sum((params["table"][t] for t in row if t != 0), np.zeros(EMBED))
                       for row in texts])
  return image_emb @ text_emb.T


def _naive_recalls(similarity, text_to_image, ks):
  """Per query: stable descending sort, the rank of the first correct item, hit if < K."""
  i2t_ranks, t2i_ranks = [], []
  for image in range(similarity.shape[0]):
    if image not in text_to_image:
      continue
    order = np.argsort(-similarity[image], kind="stable")
    i2t_ranks.append(next(r for r, t in enumerate(order) if text_to_image[t] == image))
  for text in range(similarity.shape[1]):
    order = np.argsort(-similarity[:, text], kind="stable")
    t2i_ranks.append(list(order).index(text_to_image[text]))
  out = {}
  for k in ks:
    out[f"i2t_r@{k}"] = sum(r < k for r in i2t_ranks) / len(i2t_ranks)
    out[f"t2i_r@{k}"] = sum(r < k for r in t2i_ranks) / len(t2i_ranks)
  return out


def _naive_reranked_r1(similarity, images, texts, text_to_image, params, k):
  hits = []
  for image in range(len(images)):
    if image not in text_to_image:
      continue
    candidates = np.argsort(-similarity[image], kind="stable")[:k]
    scores = [float(texts[c] @ params["rerank"]
                    + (images[image].reshape(-1) @ params["rerank_image"]) * texts[c, 1])
              for c in candidates]
    hits.append(text_to_image[candidates[int(np.argmax(scores))]] == image)
  return sum(hits) / len(hits)


@pytest.mark.parametrize("mesh_name", ["8 devices", "1 device"])
def test_recalls_and_reranked_recall_equal_a_naive_loop(setup, mesh_name):
  images, texts, text_to_image, params = setup
  evaluator = RetrievalEvaluator(embed_image, embed_text, images, texts, text_to_image, 3,
                                 ks=KS, rerank_fn=rerank, rerank_k=RERANK_K)
  got = evaluator.evaluate(params, _meshes()[mesh_name])
  similarity = _naive_similarity(images, texts, params)
  want = _naive_recalls(similarity, text_to_image, KS)
  want["i2t_r@1_itm"] = _naive_reranked_r1(similarity, images, texts, text_to_image, params,
                                           RERANK_K)
  assert set(got) == set(want)
  for name in want:
    assert got[name] == pytest.approx(want[name], rel=1e-6), name
  # The data tells the variants apart: every K of a direction differs, re-ranking changes
  # R@1, and so would re-ranking one candidate fewer.
  for direction in ("i2t", "t2i"):
    assert len({want[f"{direction}_r@{k}"] for k in KS}) == len(KS)
  assert want["i2t_r@1_itm"] != want["i2t_r@1"]
  assert want["i2t_r@1_itm"] != _naive_reranked_r1(similarity, images, texts, text_to_image,
                                                   params, RERANK_K - 1)
  assert (similarity == similarity.max(1, keepdims=True)).sum(1).max() > 1  # ties occur


def test_embeddings_skip_the_padding_rows(setup):
  images, texts, text_to_image, params = setup
  evaluator = RetrievalEvaluator(embed_image, embed_text, images, texts, text_to_image, 5)
  image_emb = evaluator.embed_images(params, images, _meshes()["8 devices"])
  np.testing.assert_array_equal(np.asarray(image_emb),
                                images.reshape(NUM_IMAGES, -1) @ params["image"])


def test_bad_input_raises_clear_errors(setup):
  images, texts, text_to_image, _ = setup
  with pytest.raises(ValueError, match=r"arrays must all be \[N, \.\.\.\]"):
    RetrievalEvaluator(embed_image, embed_text, images, texts, text_to_image[:-1], 3)
  with pytest.raises(ValueError, match=r"text_to_image must index the 13 images"):
    RetrievalEvaluator(embed_image, embed_text, images, texts, text_to_image + 1, 3)
  with pytest.raises(ValueError, match="needs a rerank_fn"):
    RetrievalEvaluator(embed_image, embed_text, images, texts, text_to_image, 3, rerank_k=2)
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    RetrievalEvaluator(embed_image, embed_text, images, texts, text_to_image, 0)
