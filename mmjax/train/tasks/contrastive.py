"""Contrastive image-text training (CLIP / SigLIP) on ShapeWorld or a user image-text source."""
from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from mmjax import losses, metrics
from mmjax.data import pipeline, shapeworld
from mmjax.data.shapeworld_inputs import (check_images, check_tokens, image_text_init_inputs,
                                          image_text_train_batches, shapeworld_source,
                                          text_tower_fields)
from mmjax.data.shapeworld_text import shapeworld_tokenizer
from mmjax.models import build_model
from mmjax.models.clip import CLIP
from mmjax.train import sharding
from mmjax.train.tasks.base import Task


def contrastive_loss(outputs: dict[str, jax.Array], config: ml_collections.ConfigDict,
                     mesh: Mesh | None = None) -> jax.Array:
  """The configured loss over a global batch of embeddings.

  `loss.kind` is "clip" or "siglip"; `loss.block_size` selects the blockwise form;
  `loss.sharded` computes it with the ring losses inside `shard_map` over the batch mesh axes,
  so no device ever holds all N embeddings.
  """
  if config.kind not in ("clip", "siglip"):
    raise ValueError(f"loss.kind must be 'clip' or 'siglip', got {config.kind!r}")
  if config.kind == "siglip" and "logit_bias" not in outputs:
    raise ValueError("loss.kind='siglip' needs a logit bias: set model.logit_bias_init "
                     "(SigLIP uses -10)")
  temperature = jnp.exp(-outputs["logit_scale"])
  bias = outputs.get("logit_bias", jnp.zeros((), jnp.float32))
  if not config.sharded:
    if config.kind == "clip":
      return losses.clip_loss(outputs["image_emb"], outputs["text_emb"], temperature,
                              block_size=config.block_size)
    return losses.siglip_loss(outputs["image_emb"], outputs["text_emb"], temperature, bias,
                              block_size=config.block_size)
  if mesh is None:
    raise ValueError("loss.sharded=True needs the trainer's mesh")
  axes = sharding.BATCH_AXES

  def ring(image_emb, text_emb, temperature, bias):
    if config.kind == "clip":
      return losses.clip_loss_sharded(image_emb, text_emb, temperature, axis_name=axes,
                                      block_size=config.block_size)
    return losses.siglip_loss_sharded(image_emb, text_emb, temperature, bias, axis_name=axes,
                                      block_size=config.block_size)

  return jax.shard_map(ring, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())(
      outputs["image_emb"], outputs["text_emb"], temperature, bias)


class ContrastiveTask(Task):
  """Image-text contrastive learning; evaluation by zero-shot accuracy and R@K."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.tokenizer = shapeworld_tokenizer()
    self._model = build_model(config.model, text_encoder=text_tower_fields(
        self.tokenizer, config.data.context_length))
    self._eval_cache = None
    self._jitted = {}

  @property
  def model(self) -> CLIP:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def _source(self, split: str, length: int, num_objects=None):
    return shapeworld_source(self.config.data, split, length, num_objects)

  def train_batches(self, process_index: int, process_count: int):
    return image_text_train_batches(self.config, self.tokenizer, process_index, process_count)

  def check_batch(self, batch, step: int) -> None:
    data = self.config.data
    image = check_images(batch, step, data.image_size)
    check_tokens(batch, step, "text", data.context_length, len(image))

  # -- model ----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array) -> Any:
    return self._model.init(rng, *image_text_init_inputs(self.config.data))["params"]

  def loss_fn(self, params, batch, rng):
    del rng  # The CLIP towers are deterministic (no dropout).
    outputs = self._model.apply({"params": params}, batch["image"], batch["text"])
    return self._loss_from_outputs(outputs)

  def _loss_from_outputs(self, outputs):
    loss = contrastive_loss(outputs, self.config.loss, self.mesh)
    return loss, {"temperature": jnp.exp(-outputs["logit_scale"])}

  def loss_and_grad(self, params, batch, rng):
    """With `grad_cache_chunks` > 0, embeds the batch in chunks (GradCache): the batch size is
    then bounded by the embeddings' memory, not by the encoders' activations."""
    chunks = self.config.grad_cache_chunks
    if not chunks:
      return super().loss_and_grad(params, batch, rng)
    model = self._model

    def embed_fn(params, chunk, rng):
      del rng
      variables = {"params": params}
      return {"image_emb": model.apply(variables, chunk["image"], method=model.encode_image),
              "text_emb": model.apply(variables, chunk["text"], method=model.encode_text)}

    def loss_fn(embeddings, params):
      logits = model.apply({"params": params}, method=model.logit_params)
      return self._loss_from_outputs({**embeddings, **logits})

    inputs = {"image": batch["image"], "text": batch["text"]}
    return losses.grad_cached_value_and_grad(embed_fn, loss_fn, params, inputs, chunks, rng,
                                             has_aux=True)

  # -- evaluation -----------------------------------------------------------------------------

  def _eval_data(self):
    """Eval inputs, built once: zero-shot prompts, single-object images, retrieval set."""
    if self._eval_cache is None:
      cfg, length = self.config.eval, self.config.data.context_length
      names = shapeworld.class_names()
      prompts = shapeworld.zero_shot_prompts()  # row = class * num_templates + template
      single = pipeline.eval_arrays(self._source("test", cfg.zero_shot_images, (1, 1)),
                                    self.tokenizer, length, cfg.zero_shot_images)
      retrieval = pipeline.eval_arrays(self._source("test", cfg.retrieval_images),
                                       self.tokenizer, length, cfg.retrieval_images)
      self._eval_cache = dict(
          prompt_tokens=self.tokenizer.encode_batch(prompts, length),
          num_templates=len(shapeworld.ZERO_SHOT_TEMPLATES),
          heldout=np.array([shapeworld.is_heldout_class(i) for i in range(len(names))]),
          single=single, retrieval=retrieval)
    return self._eval_cache

  def embed(self, params, array: np.ndarray, method: str, mesh: Mesh) -> jax.Array:
    """Embeds host `array` `[N, ...]` in fixed-size, batch-sharded chunks -> `[N, E]` on device."""
    if method not in self._jitted:
      self._jitted[method] = jax.jit(
          lambda params, x: self._model.apply({"params": params}, x, method=method))
    fn = functools.partial(self._jitted[method], params)
    chunks = sharding.map_in_chunks(fn, (array,), mesh, self.config.eval.batch_size, host=False)
    return jnp.concatenate([out[:count] for count, out in chunks])

  def zero_shot_embeddings(self, params, mesh: Mesh) -> dict[str, Any]:
    """Embeddings of the zero-shot evaluation.

    Returns:
      prompt_emb `[C, T, E]` (class x template), class_emb `[C, E]` (template mean,
      renormalised: CLIP's recipe), image_emb `[N, E]` of the single-object test images and
      their labels int `[N]` (host).
    """
    data = self._eval_data()
    prompt_emb = self.embed(params, data["prompt_tokens"], "encode_text", mesh)
    prompt_emb = prompt_emb.reshape(-1, data["num_templates"], prompt_emb.shape[-1])
    class_emb = prompt_emb.mean(1)
    class_emb = class_emb / jnp.linalg.norm(class_emb, axis=-1, keepdims=True)
    image_emb = self.embed(params, data["single"]["image"], "encode_image", mesh)
    return dict(prompt_emb=prompt_emb, class_emb=class_emb, image_emb=image_emb,
                labels=data["single"]["label"])

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    data = self._eval_data()
    zero_shot = self.zero_shot_embeddings(params, mesh)
    logits = zero_shot["image_emb"] @ zero_shot["class_emb"].T
    labels = zero_shot["labels"]
    is_heldout = data["heldout"][labels]
    results = {}
    for name, rows in (("zeroshot_top1", ~is_heldout), ("zeroshot_top1_heldout", is_heldout)):
      if rows.any():
        acc = metrics.zero_shot_accuracy(logits[np.flatnonzero(rows)], labels[rows], ks=(1,))
        results[name] = float(sharding.to_host(acc["top1"]))
    retrieval = data["retrieval"]
    image_emb = self.embed(params, retrieval["image"], "encode_image", mesh)
    text_emb = self.embed(params, retrieval["text"], "encode_text", mesh)
    recalls = metrics.retrieval_recall(image_emb @ text_emb.T, retrieval["text_to_image"],
                                       ks=(1, 5, 10))
    recalls = sharding.to_host(recalls)
    for direction in ("i2t", "t2i"):
      for k in (1, 5, 10):
        results[f"{direction}_r@{k}"] = float(recalls[f"{direction}_r@{k}"])
    return results

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    from mmjax.train import plots
    data = self._eval_data()["retrieval"]
    count = min(8, len(data["image"]))
    image_emb = self.embed(params, data["image"][:count], "encode_image", mesh)
    text_emb = self.embed(params, data["text"], "encode_text", mesh)
    top = sharding.to_host(jax.lax.top_k(image_emb @ text_emb.T, 3)[1])
    if jax.process_index() != 0:
      return []
    captions = [[data["captions"][j] for j in row] for row in top]
    return [plots.loss_curve(workdir),
            plots.retrieval_grid(workdir / "retrieval.png", data["image"][:count], captions)]

