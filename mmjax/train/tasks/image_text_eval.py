"""The ShapeWorld image-text evaluations that every two-tower model shares (CLIP, SigLIP, BLIP):
zero-shot classification of single-object test images and image<->text retrieval R@K.

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
from mmjax.data.shapeworld_inputs import shapeworld_source
from mmjax.data.tokenizer import Tokenizer
from mmjax.train import sharding
from mmjax.train.evaluators import RetrievalEvaluator, ZeroShotEvaluator


def retrieval_arrays(config: Any, tokenizer: Tokenizer) -> dict[str, Any]:
  """The first `eval.retrieval_images` test images with all their captions
  (`pipeline.eval_arrays`: image `[N, H, W, 3]`, text int32 `[5N, L]`, text_to_image `[5N]`,
  captions: 5N str)."""
  count = config.eval.retrieval_images
  return pipeline.eval_arrays(shapeworld_source(config.data, "test", count), tokenizer,
                              config.data.context_length, count)


def zero_shot_evaluator(config: Any, tokenizer: Tokenizer, embed_image: Callable,
                        embed_text: Callable) -> ZeroShotEvaluator:
  """Top-1 over the 48 (colour, shape) classes of `eval.zero_shot_images` single-object test
  images, class embeddings averaged over `shapeworld.ZERO_SHOT_TEMPLATES`; held-out classes
  reported apart."""
  count, length = config.eval.zero_shot_images, config.data.context_length
  single = pipeline.eval_arrays(shapeworld_source(config.data, "test", count, (1, 1)), tokenizer,
                                length, count)
  prompt_tokens = tokenizer.encode_batch(shapeworld.zero_shot_prompts(), length)
  prompt_tokens = prompt_tokens.reshape(len(shapeworld.class_names()),
                                        len(shapeworld.ZERO_SHOT_TEMPLATES), length)
  return ZeroShotEvaluator(embed_image, embed_text, single["image"], single["label"],
                           prompt_tokens, config.eval.batch_size,
                           heldout_classes=shapeworld.heldout_mask())


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
