"""ZeroShotEvaluator against a naive float64 numpy loop: per class the mean of its template
embeddings, renormalised; per image the arg-max class; top-1 over seen and held-out images.

29 images and 18 prompts in chunks of 4 on 8 devices (data 2 x fsdp 2 x tensor 2), padding in
the last chunk. The data is checked to make the variants differ (no renormalisation, held-out
mask inverted) and to have no near-tie between the two best classes, so the comparison can be
exact."""
import jax
import numpy as np
import pytest

from mmjax.train import sharding
from mmjax.train.evaluators import ZeroShotEvaluator

NUM_IMAGES, CLASSES, TEMPLATES, LENGTH, VOCAB, EMBED = 29, 6, 3, 4, 11, 5
HELDOUT = np.array([False, False, True, False, False, True])


def _normalise(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def embed_image(params, images):
  emb = images.reshape(len(images), -1) @ params["image"]
  return emb / jax.numpy.linalg.norm(emb, axis=-1, keepdims=True)


def embed_text(params, tokens):
  emb = params["table"][tokens].sum(1)
  return emb / jax.numpy.linalg.norm(emb, axis=-1, keepdims=True)


def _naive_logits(images, prompt_tokens, params, renormalise=True):
  image_emb = _normalise(images.reshape(len(images), -1).astype(np.float64) @ params["image"])
  class_emb = []
  for templates in prompt_tokens:
    prompts = [_normalise(params["table"][row].astype(np.float64).sum(0)) for row in templates]
    mean = np.mean(prompts, axis=0)
    class_emb.append(_normalise(mean) if renormalise else mean)
  return image_emb @ np.stack(class_emb).T


def _naive_top1(logits, labels, rows):
  hits = [np.argmax(logits[i]) == labels[i] for i in range(len(labels)) if rows[i]]
  return sum(hits) / len(hits)


def _naive_metrics(logits, labels, heldout):
  is_heldout = heldout[labels]
  return {"zeroshot_top1": _naive_top1(logits, labels, ~is_heldout),
          "zeroshot_top1_heldout": _naive_top1(logits, labels, is_heldout)}


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(NUM_IMAGES, 2, 2, 2)).astype(np.float32)
  prompt_tokens = rng.integers(0, VOCAB, (CLASSES, TEMPLATES, LENGTH)).astype(np.int32)
  params = {"image": rng.normal(size=(8, EMBED)).astype(np.float32),
            "table": rng.normal(size=(VOCAB, EMBED)).astype(np.float32)}
  predicted = _naive_logits(images, prompt_tokens, params).argmax(1)
  labels = np.where(rng.random(NUM_IMAGES) < 0.5, predicted,
                    rng.integers(0, CLASSES, NUM_IMAGES)).astype(np.int32)
  return images, labels, prompt_tokens, params


def test_top1_equals_a_naive_loop(setup):
  images, labels, prompt_tokens, params = setup
  evaluator = ZeroShotEvaluator(embed_image, embed_text, images, labels, prompt_tokens, 4,
                                heldout_classes=HELDOUT)
  got = evaluator.evaluate(params, sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  logits = _naive_logits(images, prompt_tokens, params)
  want = _naive_metrics(logits, labels, HELDOUT)
  assert got == pytest.approx(want, rel=1e-6) and set(got) == set(want)
  # Preconditions that make the comparison exact and able to fail.
  top2 = np.sort(logits, 1)[:, -2:]
  assert (top2[:, 1] - top2[:, 0]).min() > 1e-4
  assert want["zeroshot_top1"] != want["zeroshot_top1_heldout"]
  assert _naive_metrics(logits, labels, ~HELDOUT) != want
  assert _naive_metrics(_naive_logits(images, prompt_tokens, params, renormalise=False),
                        labels, HELDOUT) != want


def test_class_embeddings_are_renormalised_template_means(setup):
  images, labels, prompt_tokens, params = setup
  evaluator = ZeroShotEvaluator(embed_image, embed_text, images, labels, prompt_tokens, 5)
  out = evaluator.embeddings(params, sharding.make_mesh({"data": 8}))
  assert out["prompt_emb"].shape == (CLASSES, TEMPLATES, EMBED)
  want = _normalise(np.stack([np.mean([_normalise(params["table"][row].sum(0)) for row in t], 0)
                              for t in prompt_tokens]))
  np.testing.assert_allclose(np.asarray(out["class_emb"]), want, rtol=1e-5, atol=1e-6)


def test_without_heldout_classes_all_images_count_as_seen(setup):
  images, labels, prompt_tokens, params = setup
  evaluator = ZeroShotEvaluator(embed_image, embed_text, images, labels, prompt_tokens, 4)
  got = evaluator.evaluate(params, sharding.make_mesh({"data": 8}))
  logits = _naive_logits(images, prompt_tokens, params)
  assert got == pytest.approx({"zeroshot_top1": _naive_top1(logits, labels,
                                                            np.ones(NUM_IMAGES, bool))})


def test_bad_input_raises_clear_errors(setup):
  images, labels, prompt_tokens, _ = setup
  with pytest.raises(ValueError, match=r"prompt_tokens must be int \[classes, templates"):
    ZeroShotEvaluator(embed_image, embed_text, images, labels, prompt_tokens[0], 4)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
    ZeroShotEvaluator(embed_image, embed_text, images, labels + 6, prompt_tokens, 4)
  with pytest.raises(ValueError, match=r"heldout_classes must be bool \[C=6\]"):
    ZeroShotEvaluator(embed_image, embed_text, images, labels, prompt_tokens, 4,
                      heldout_classes=HELDOUT[:4])
  with pytest.raises(ValueError, match=r"arrays must all be \[N, \.\.\.\]"):
    ZeroShotEvaluator(embed_image, embed_text, images, labels[:-1], prompt_tokens, 4)
