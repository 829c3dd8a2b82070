"""CaptioningEvaluator with an integer 'tiny model' generate_fn: captions against a numpy
transcription decoded word by word, BLEU-4 against its closed form (1 when every caption is a
reference) and against `metrics.corpus_bleu` / 100 on the naive captions, attribute metrics
against a naive per-caption count. 11 images in chunks of 3 on 8 devices."""
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import metrics
from mmjax.data.tokenizer import WordTokenizer
from mmjax.train import sharding
from mmjax.train.evaluators import CaptioningEvaluator

WORDS = ("a", "red", "blue", "small", "large", "circle", "square", "there", "is")
NUM_IMAGES, STEPS = 11, 6
TOKENIZER = WordTokenizer(WORDS)  # ids: pad 0, bos 1, eos 2, unk 3, then WORDS


def generate(params, images):
  """Token ids int32 [B, STEPS]: per step the arg-max of an integer linear map."""
  flat = images.reshape(len(images), -1)
  logits = jnp.einsum("bi,tiv->btv", flat, params["w"])
  return jnp.argmax(logits, -1).astype(jnp.int32)


def _naive_captions(images, params):
  captions = []
  for image in images:
    words = []
    for step in range(STEPS):
      token = int(np.argmax(image.reshape(-1) @ params["w"][step]))
      if token == TOKENIZER.eos_id:
        break
      if token > TOKENIZER.unk_id:
        words.append(WORDS[token - 4])
      elif token == TOKENIZER.unk_id:
        words.append("<unk>")
    captions.append(" ".join(words))
  return captions


def _naive_mentions(captions, wanted_word):
  return {"mention_accuracy": float(np.mean([WORDS[w] in c.split()
                                             for c, w in zip(captions, wanted_word)]))}


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 2, (NUM_IMAGES, 2, 2, 3)).astype(np.float32)
  w = rng.integers(-3, 4, (STEPS, 12, TOKENIZER.vocab_size)).astype(np.float32)
  w[:, :, 4:] += 2  # mostly words ...
  w[3:, :, TOKENIZER.eos_id] += 3  # ... and some captions end early
  params = {"w": w}
  captions = _naive_captions(images, params)
  assert len(set(captions)) > 5 and any(len(c.split()) < STEPS for c in captions)
  return images, params, captions


def test_captions_and_scores_equal_naive_references(setup):
  images, params, captions = setup
  mesh = sharding.make_mesh({"data": 8})
  rng = np.random.default_rng(2)
  others = [" ".join(rng.choice(WORDS, 5)) for _ in range(NUM_IMAGES)]
  # Half the images have their own caption among the references: BLEU well inside (0, 1).
  references = [[others[i], captions[i]] if i % 2 else [others[i]] for i in range(NUM_IMAGES)]
  wanted_word = rng.integers(0, len(WORDS), NUM_IMAGES)
  evaluator = CaptioningEvaluator(generate, TOKENIZER, images, references, 3,
                                  attribute_labels={"word": wanted_word},
                                  attribute_metrics=lambda c, labels: _naive_mentions(
                                      c, labels["word"]))
  got = evaluator.evaluate(params, mesh)
  assert evaluator.last_captions == captions
  want = {"bleu4": metrics.corpus_bleu(captions, references) / 100.0,
          "cider_d": metrics.cider_d(captions, references),
          **_naive_mentions(captions, wanted_word)}
  assert got == want
  assert 0.05 < got["bleu4"] < 0.95 and 0 < got["mention_accuracy"] < 1
  # Misaligned captions would score differently.
  assert metrics.corpus_bleu(captions[1:] + captions[:1], references) / 100 != got["bleu4"]


def test_bleu4_is_one_when_every_caption_is_a_reference(setup):
  images, params, captions = setup
  long = [i for i, c in enumerate(captions) if len(c.split()) >= 4]
  assert len(long) >= 3
  references = [[captions[i], "a red circle"] for i in long]
  evaluator = CaptioningEvaluator(generate, TOKENIZER, images[long], references, 2)
  got = evaluator.evaluate(params, sharding.make_mesh({"data": 8}))
  assert got["bleu4"] == pytest.approx(1.0) and set(got) == {"bleu4", "cider_d"}


def test_bad_input_raises_clear_errors(setup):
  images, _, _ = setup
  refs = [["a red circle"]] * NUM_IMAGES
  with pytest.raises(ValueError, match=r"references must hold one list per image \(11\)"):
    CaptioningEvaluator(generate, TOKENIZER, images, refs[:-1], 3)
  with pytest.raises(ValueError, match=r"images \[0\] have none"):
    CaptioningEvaluator(generate, TOKENIZER, images, [[]] + refs[1:], 3)
  with pytest.raises(ValueError, match="attribute_labels and attribute_metrics go together"):
    CaptioningEvaluator(generate, TOKENIZER, images, refs, 3,
                        attribute_labels={"word": np.zeros(NUM_IMAGES)})
  with pytest.raises(ValueError, match=r"with N = 11"):
    CaptioningEvaluator(generate, TOKENIZER, images, refs, 3,
                        attribute_labels={"word": np.zeros(4)}, attribute_metrics=_naive_mentions)
