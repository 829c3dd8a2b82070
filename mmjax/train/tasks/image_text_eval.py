"""The image-text evaluations that every two-tower model shares (CLIP, SigLIP, BLIP): zero-shot
classification and image<->text retrieval R@K on the test split of any `data.name` source.

Zero-shot classes: ShapeWorld's 48 (colour, shape) classes on single-object test images; for a
user's data, `eval.class_names` (list of str, indexed by the records' int `label`) with
`eval.templates` (format strings with "{}", e.g. "a photo of a {}."), over the test images that
carry a label. Without class names a user's data gets no zero-shot metric.

A task gives its model's `embed_image(params, images [B, H, W, 3]) -> [B, E]` and
`embed_text(params, tokens [B, L]) -> [B, E]` (normalised, jittable) and gets the evaluators;
`config` is the task config (data: name, seed, image_size, num_objects, context_length; eval:
zero_shot_images, retrieval_images, batch_size).
"""
from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh


from mmjax.data import pipeline, shapeworld
from mmjax.data.sources import image_text_source
from mmjax.data.tokenizer import Tokenizer
from mmjax.errors import ConfigError
from mmjax.train import sharding
from mmjax.train.evaluators import RetrievalEvaluator, ZeroShotEvaluator


def retrieval_arrays(config: Any, tokenizer: Tokenizer) -> dict[str, Any]:
  """The first `eval.retrieval_images` test images with all their captions
  (`pipeline.eval_arrays`: image `[N, H, W, 3]`, text int32 `[5N, L]`, text_to_image `[5N]`,
  captions: 5N str)."""
  source = image_text_source(config.data, "test", config.eval.retrieval_images)
  return pipeline.eval_arrays(source, tokenizer, config.data.context_length, len(source))


def zero_shot_evaluator(config: Any, tokenizer: Tokenizer, embed_image: Callable,
                        embed_text: Callable) -> ZeroShotEvaluator | None:
  """Top-1 over the zero-shot classes (module docstring) of at most `eval.zero_shot_images`
  test images, class embeddings averaged over the templates; ShapeWorld's held-out classes
  reported apart. None for a user's data without `eval.class_names`."""
  count, length = config.eval.zero_shot_images, config.data.context_length
  if config.data.name == "shapeworld":
    single = pipeline.eval_arrays(image_text_source(config.data, "test", count, (1, 1)),
                                  tokenizer, length, count)
    names, templates = shapeworld.class_names(), shapeworld.ZERO_SHOT_TEMPLATES
    prompts = shapeworld.zero_shot_prompts()
    images, labels, heldout = single["image"], single["label"], shapeworld.heldout_mask()
  else:
    names, templates = user_classes(config.eval)
    if not names:
      return None
    source = image_text_source(config.data, "test", count)
    arrays = pipeline.eval_arrays(source, tokenizer, length, len(source))
    keep = arrays["label"] >= 0
    if not keep.any():
      raise ConfigError(f"eval.class_names is set but no test record of {source!r} has a "
                        "'label' (an int index into eval.class_names)")
    images, labels, heldout = arrays["image"][keep], arrays["label"][keep], None
    if labels.max() >= len(names):
      raise ConfigError(f"a test record has label {labels.max()}, but eval.class_names has only "
                        f"{len(names)} names")
    prompts = [template.format(name) for name in names for template in templates]
  prompt_tokens = tokenizer.encode_batch(prompts, length).reshape(len(names), len(templates),
                                                                  length)
  return ZeroShotEvaluator(embed_image, embed_text, images, labels, prompt_tokens,
                           config.eval.batch_size, heldout_classes=heldout)


def user_classes(eval_config: Any) -> tuple[list[str], list[str]]:
  """(`eval.class_names`, `eval.templates`) checked: names a list of non-empty str, templates
  format strings with one "{}" (default: "a photo of a {}.")."""
  names = list(eval_config.get("class_names", ()) or ())
  templates = list(eval_config.get("templates", ()) or ()) or ["a photo of a {}."]
  if any(not isinstance(n, str) or not n.strip() for n in names):
    raise ConfigError(f"eval.class_names must be a list of non-empty str, got {names!r}")
  for template in templates:
    if not isinstance(template, str) or template.count("{}") != 1:
      raise ConfigError(f"each of eval.templates must be a str with exactly one '{{}}' for the "
                        f"class name, got {template!r}")
  return names, templates


def retrieval_evaluator(config: Any, arrays: dict[str, Any], embed_image: Callable,
                        embed_text: Callable, **rerank) -> RetrievalEvaluator:
  """i2t / t2i R@1/5/10 over `arrays` (see `retrieval_arrays`); `rerank` = rerank_fn,
  rerank_k of `RetrievalEvaluator`."""
  return RetrievalEvaluator(embed_image, embed_text, arrays["image"], arrays["text"],
                            arrays["text_to_image"], config.eval.batch_size, **rerank)


def retrieval_artifacts(retrieval: RetrievalEvaluator, captions: list[str], params: Any,
                        mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
  """The loss curve and `retrieval.png`: the first 8 retrieval images with their 3 best texts
  (`captions`: the T caption strings of `retrieval.texts`); process 0 writes them."""
  from mmjax.train import plots
  images = retrieval.images[:min(8, len(retrieval.images))]
  similarity = (retrieval.embed_images(params, images, mesh)
                @ retrieval.embed_texts(params, retrieval.texts, mesh).T)
  top = sharding.to_host(jax.lax.top_k(similarity, 3)[1])
  if jax.process_index() != 0:
    return []
  rows = [[captions[j] for j in row] for row in top]
  return [plots.loss_curve(workdir), plots.retrieval_grid(workdir / "retrieval.png", images,
                                                          rows)]
