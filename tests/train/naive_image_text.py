"""Naive references for the two-tower evaluations (zero-shot top-1, R@K, ITM re-ranked R@1):
the eval data rebuilt from ShapeWorld, the model's own encoders applied on one device, and the
metrics computed by per-query loops over numpy arrays."""
import jax
import numpy as np

from mmjax.data import shapeworld


def eval_sets(config, tokenizer):
  """The eval data from the ShapeWorld test split, without the tasks' helpers.

  Returns single-object images `[Z, S, S, 3]` and labels `[Z]`, prompt tokens `[C * T, L]`
  (class-major), retrieval images `[N, S, S, 3]`, caption tokens `[5N, L]` and their owners
  `[5N]`."""
  data, length = config.data, config.data.context_length

  def test_split(count, num_objects):
    source = shapeworld.ShapeWorld(split="test", length=count, seed=data.seed,
                                   image_size=data.image_size, num_objects=num_objects)
    return [source[i] for i in range(count)]

  single = test_split(config.eval.zero_shot_images, (1, 1))
  scenes = test_split(config.eval.retrieval_images, tuple(data.num_objects))
  captions = [(caption, i) for i, item in enumerate(scenes) for caption in item["captions"]]
  images = lambda items: np.stack([item["image"] for item in items]).astype(np.float32) / 255
  return dict(
      single_image=images(single), label=np.array([item["label"] for item in single]),
      prompt_tokens=tokenizer.encode_batch(shapeworld.zero_shot_prompts(), length),
      image=images(scenes), text=tokenizer.encode_batch([c for c, _ in captions], length),
      text_to_image=np.array([owner for _, owner in captions]))


_APPLY = {}


def apply(model, params, method, *inputs):
  """`model.apply(..., method=method)` on one device, as numpy (compiled once per method)."""
  key = (model, method)
  if key not in _APPLY:
    _APPLY[key] = jax.jit(lambda params, *x: model.apply({"params": params}, *x, method=method))
  params = jax.device_put(params, jax.devices()[0])
  return np.asarray(_APPLY[key](params, *inputs))


def zero_shot_top1(image_emb, prompt_emb, labels, num_templates):
  """CLIP's zero-shot top-1 (class embedding = renormalised template mean), per image.

  Returns the class embeddings `[C, E]` and {"zeroshot_top1": over seen classes,
  "zeroshot_top1_heldout": over held-out classes}."""
  class_emb = prompt_emb.reshape(-1, num_templates, prompt_emb.shape[-1]).mean(1)
  class_emb = class_emb / np.linalg.norm(class_emb, axis=-1, keepdims=True)
  heldout = shapeworld.heldout_mask()
  hits = {"zeroshot_top1": [], "zeroshot_top1_heldout": []}
  for emb, label in zip(image_emb, labels):
    scores = [float(emb @ c) for c in class_emb]
    key = "zeroshot_top1_heldout" if heldout[label] else "zeroshot_top1"
    hits[key].append(int(np.argmax(scores)) == label)
  return class_emb, {key: float(np.mean(value)) for key, value in hits.items()}


def _ranking(scores):
  """Candidates best first; equal scores in index order."""
  return sorted(range(len(scores)), key=lambda c: (-scores[c], c))


def recall_at_k(image_emb, text_emb, text_to_image, ks=(1, 5, 10)):
  """{"i2t_r@K", "t2i_r@K"}: an image hits at K when one of its captions is among its K best
  texts; a caption when its image is among its K best images."""
  similarity = image_emb @ text_emb.T
  i2t_rank = [min(_ranking(similarity[i]).index(t) for t in np.flatnonzero(text_to_image == i))
              for i in range(len(image_emb))]
  t2i_rank = [_ranking(similarity[:, t]).index(owner) for t, owner in enumerate(text_to_image)]
  results = {}
  for direction, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
    for k in ks:
      results[f"{direction}_r@{k}"] = float(np.mean([rank < k for rank in ranks]))
  return results


def itm_reranked_recall_at_1(image_emb, text_emb, text_to_image, k, itm_score):
  """i2t R@1 when each image's top-`k` texts by embedding similarity are re-ranked by
  `itm_score(image index, text indices) -> scores [k]`."""
  similarity = image_emb @ text_emb.T
  hits = []
  for i in range(len(image_emb)):
    candidates = _ranking(similarity[i])[:k]
    best = candidates[int(np.argmax(itm_score(i, candidates)))]
    hits.append(text_to_image[best] == i)
  return float(np.mean(hits))
