"""Contrastive image-text training (CLIP / SigLIP) on ShapeWorld or a user image-text source."""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from mmjax import losses
from mmjax.data.shapeworld_inputs import (check_images, check_tokens, image_text_init_inputs,
                                          image_text_train_batches, text_tower_fields)
from mmjax.data.sources import task_tokenizer
from mmjax.models import build_model
from mmjax.models.clip import CLIP
from mmjax.train import sharding
from mmjax.train.tasks import image_text_eval
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
    self.tokenizer = task_tokenizer(config.data)
    self._model = build_model(config.model, text_encoder=text_tower_fields(
        self.tokenizer, config.data.context_length))
    self._evaluators = None
    self._retrieval_captions = None  # the retrieval texts as str, for write_artifacts

  @property
  def model(self) -> CLIP:
    return self._model

  # -- data -----------------------------------------------------------------------------------

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

  def evaluators(self) -> dict[str, Any]:
    """{"zero_shot": ZeroShotEvaluator (absent for a user's data without eval.class_names),
    "retrieval": RetrievalEvaluator} over the model's `encode_image` / `encode_text`, built
    (test data read) on first use."""
    if self._evaluators is None:
      model = self._model
      embed_image = lambda params, images: model.apply({"params": params}, images,
                                                       method=model.encode_image)
      embed_text = lambda params, tokens: model.apply({"params": params}, tokens,
                                                      method=model.encode_text)
      arrays = image_text_eval.retrieval_arrays(self.config, self.tokenizer)
      zero_shot = image_text_eval.zero_shot_evaluator(self.config, self.tokenizer, embed_image,
                                                      embed_text)
      self._evaluators = {
          **({"zero_shot": zero_shot} if zero_shot is not None else {}),
          "retrieval": image_text_eval.retrieval_evaluator(self.config, arrays, embed_image,
                                                           embed_text)}
      self._retrieval_captions = arrays["captions"]
    return self._evaluators

  def zero_shot_embeddings(self, params, mesh: Mesh) -> dict[str, Any]:
    """The zero-shot evaluator's prompt_emb `[C, T, E]`, class_emb `[C, E]`, image_emb `[N, E]`
    and host labels int `[N]` (for experiment scripts)."""
    return self.evaluators()["zero_shot"].embeddings(params, mesh)

  def embed_images(self, params, images: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host images `[N, H, W, 3]` -> normalised embeddings `[N, E]` on device."""
    return self.evaluators()["retrieval"].embed_images(params, images, mesh)

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    return {name: value for evaluator in self.evaluators().values()
            for name, value in evaluator.evaluate(params, mesh).items()}

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    return image_text_eval.retrieval_artifacts(self.evaluators()["retrieval"],
                                               self._retrieval_captions, params, mesh, workdir)
