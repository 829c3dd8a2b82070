"""BLIP pre-training (ITC + ITM + LM) on ShapeWorld, on the contrastive task's data and evals.

loss = itc_weight L_ITC + itm_weight L_ITM + lm_weight L_LM over one global batch:
  L_ITC  the contrastive task's `contrastive_loss` on the unimodal embeddings;
  L_ITM  2-way CE over [N positives; N (image, mined text); N (mined image, text)], negatives
         drawn by `losses.mine_itm_negatives` from the ITC logits of the GLOBAL batch (the
         train step is one `jax.jit` over batch-sharded arrays); identical captions, and with
         `loss.itm_positives="label"` also pairs of the same class label, are never negatives;
  L_LM   next-token CE of BOS + `lm_prompt` + caption + EOS; the prompt is given, not scored.

The training stream is the contrastive task's (`image_text_train_batches`). Evaluation is the
shared evaluators over BLIP's own predict functions: zero-shot and R@K (`image_text_eval`)
through `encode_image`/`encode_text`, i2t R@1 after re-ranking each image's top ITC candidates
by the ITM head, and greedy-caption BLEU-4 / CIDEr-D (`CaptioningEvaluator`).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mmjax import decoding, losses
from mmjax.data.shapeworld_inputs import check_caption_batch, image_text_train_batches
from mmjax.data.sources import task_tokenizer
from mmjax.losses import caption_loss
from mmjax.models import build_model
from mmjax.models.blip import BLIP
from mmjax.train.evaluators import CaptioningEvaluator
from mmjax.train.tasks import image_text_eval
from mmjax.train.tasks.base import Task
from mmjax.train.tasks.contrastive import contrastive_loss

LOSS_WEIGHTS = ("itc_weight", "itm_weight", "lm_weight")
ITM_POSITIVES = ("caption", "label")


def _check_config(config: ml_collections.ConfigDict) -> None:
  loss = config.loss
  if loss.kind != "clip":
    raise ValueError(f"loss.kind must be 'clip' for BLIP (its ITC is InfoNCE), got {loss.kind!r}")
  weights = [loss[name] for name in LOSS_WEIGHTS]
  if min(weights) < 0 or max(weights) <= 0:
    raise ValueError(f"loss weights {dict(zip(LOSS_WEIGHTS, weights))} must be >= 0 with at "
                     "least one > 0")
  if config.batch_size < 2 and loss.itm_weight > 0:
    raise ValueError(f"ITM mines negatives inside the batch: batch_size must be >= 2, got "
                     f"{config.batch_size}")
  if loss.itm_positives not in ITM_POSITIVES:
    raise ValueError(f"loss.itm_positives must be one of {ITM_POSITIVES}, got "
                     f"{loss.itm_positives!r}")
  if loss.itm_positives == "label" and tuple(config.data.num_objects) != (1, 1):
    raise ValueError(f"loss.itm_positives='label' treats equal labels (the FIRST object's "
                     f"class) as matches, which holds for single-object scenes only; with "
                     f"data.num_objects={tuple(config.data.num_objects)} use 'caption'")
  for name in ("itm_rerank_k", "caption_images"):
    if config.eval[name] < 0:
      raise ValueError(f"eval.{name} must be >= 0 (0 = off), got {config.eval[name]}")


class BLIPTask(Task):
  """ITC + ITM + LM; evaluation: zero-shot, R@K, ITM-re-ranked i2t R@1, caption BLEU-4."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    _check_config(config)
    self.tokenizer = tok = task_tokenizer(config.data)
    prompt = config.loss.lm_prompt.strip()
    self.prompt_ids = np.asarray(tok.encode(prompt) if prompt else [], np.int32)
    if (self.prompt_ids == tok.unk_id).any():
      raise ValueError(f"loss.lm_prompt {config.loss.lm_prompt!r} has words outside the "
                       "ShapeWorld vocabulary")
    # Decoder rows: BOS + prompt + caption + EOS, the caption part as long as a batch's text.
    self.lm_length = config.data.context_length + len(self.prompt_ids)
    self.max_new_tokens = config.data.context_length - 1  # caption words + EOS after the prompt
    self._model = build_model(config.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                              max_length=self.lm_length)
    self._evaluators = None
    self._retrieval_captions = None  # the retrieval texts as str, for write_artifacts

  @property
  def model(self) -> BLIP:
    return self._model

  # -- data -----------------------------------------------------------------------------------

  def train_batches(self, process_index: int, process_count: int):
    return image_text_train_batches(self.config, self.tokenizer, process_index, process_count)

  def check_batch(self, batch, step: int) -> None:
    check_caption_batch(batch, step, self.config.data, self.tokenizer)
    if self.config.loss.itm_positives != "label":
      return
    label, size = batch.get("label"), len(batch["text"])
    if label is None or np.shape(label) != (size,) or not np.issubdtype(np.asarray(label).dtype,
                                                                        np.integer):
      got = "no 'label'" if label is None else (f"label of shape {np.shape(label)} dtype "
                                                f"{np.asarray(label).dtype}")
      raise ValueError(f"batch at step {step}: loss.itm_positives='label' needs int 'label' "
                       f"[{size}] (class ids, -1 = unknown), got {got}")

  # -- loss -----------------------------------------------------------------------------------

  def itm_positive_mask(self, batch) -> jax.Array:
    """bool `[B, B]`: pairs never mined as ITM negatives. Identical caption rows, and with
    `loss.itm_positives="label"` pairs whose `label` `[B]` is equal and >= 0 (ShapeWorld's
    class of the first object: the whole scene up to size and position in single-object data,
    where captions of one class are paraphrases, i.e. false negatives)."""
    mask = losses.positive_mask_from_ids(batch["text"])
    if self.config.loss.itm_positives == "label":
      label = batch["label"]
      mask = mask | (losses.positive_mask_from_ids(label) & (label >= 0)[:, None])
    return mask

  def lm_inputs(self, text: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Decoder rows for `text` int `[B, L]` (BOS + caption + EOS + padding).

    Returns:
      tokens int32 `[B, L + P]` = BOS + prompt + caption + EOS + padding, and prompt_mask bool
      `[B, L + P]`, True at the P prompt tokens (given, so left out of the LM loss).
    """
    batch = text.shape[0]
    num_prompt = len(self.prompt_ids)
    prompt = jnp.broadcast_to(jnp.asarray(self.prompt_ids), (batch, num_prompt))
    tokens = jnp.concatenate([text[:, :1], prompt.astype(text.dtype), text[:, 1:]], axis=1)
    index = jnp.arange(tokens.shape[1])
    prompt_mask = jnp.broadcast_to((index >= 1) & (index <= num_prompt), tokens.shape)
    return tokens, prompt_mask

  def loss_fn(self, params, batch, rng):
    model, variables, cfg = self._model, {"params": params}, self.config.loss
    images, text = batch["image"], batch["text"]
    image_tokens, image_emb = model.apply(variables, images, method=BLIP.image_features)
    text_emb = model.apply(variables, text, method=BLIP.encode_text)
    logit_scale = model.apply(variables, method=BLIP.logit_params)["logit_scale"]
    itc = contrastive_loss({"image_emb": image_emb, "text_emb": text_emb,
                            "logit_scale": logit_scale}, cfg, self.mesh)
    itm, itm_accuracy = self._itm_loss(variables, rng, image_tokens, image_emb, text_emb,
                                       logit_scale, text, self.itm_positive_mask(batch))
    lm_tokens, prompt_mask = self.lm_inputs(text)
    lm_logits = model.apply(variables, lm_tokens, image_tokens, method=BLIP.lm_logits)
    lm = caption_loss(lm_logits, lm_tokens, self.tokenizer.pad_id, prompt_mask)
    loss = cfg.itc_weight * itc + cfg.itm_weight * itm + cfg.lm_weight * lm
    return loss, {"itc_loss": itc, "itm_loss": itm, "lm_loss": lm,
                  "itm_accuracy": itm_accuracy, "temperature": jnp.exp(-logit_scale)}

  def _itm_loss(self, variables, rng, image_tokens, image_emb, text_emb, logit_scale, text,
                positive_mask):
    """(ITM loss, accuracy) on [positives; image-negatives; text-negatives], `3B` rows."""
    sim = (image_emb @ text_emb.T) * jnp.exp(logit_scale)
    negatives = losses.mine_itm_negatives(rng, sim, positive_mask)
    itm_images = jnp.concatenate([image_tokens, image_tokens,
                                  image_tokens[negatives.image_index]])
    itm_text = jnp.concatenate([text, text[negatives.text_index], text])
    logits = self._model.apply(variables, itm_images, itm_text, method=BLIP.itm_logits)
    n = text.shape[0]
    valid = jnp.concatenate([negatives.text_valid, negatives.image_valid])
    loss = losses.itm_loss(logits[:n], logits[n:], valid)
    weights = jnp.concatenate([jnp.ones((n,), bool), valid]).astype(jnp.float32)
    labels = (jnp.arange(3 * n) < n).astype(jnp.int32)  # 1 = match
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss, (hits * weights).sum() / weights.sum()

  def init_params(self, rng: jax.Array) -> Any:
    size, length = self.config.data.image_size, self.lm_length
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, length), jnp.int32)
    return self._model.init(rng, images, tokens)["params"]

  # -- evaluation -----------------------------------------------------------------------------

  def evaluators(self) -> dict[str, Any]:
    """The shared two-tower evaluators over `encode_image` / `encode_text` ("zero_shot";
    "retrieval", re-ranked by the ITM head when `eval.itm_rerank_k` > 0) and, when
    `eval.caption_images` > 0, "captioning" of the first retrieval images against their 5
    captions; built (test data rendered) on first use."""
    if self._evaluators is None:
      cfg, model = self.config.eval, self._model
      embed_image = lambda params, images: model.apply({"params": params}, images,
                                                       method=BLIP.encode_image)
      embed_text = lambda params, tokens: model.apply({"params": params}, tokens,
                                                      method=BLIP.encode_text)
      arrays = image_text_eval.retrieval_arrays(self.config, self.tokenizer)
      rerank = dict(rerank_fn=self._itm_scores, rerank_k=cfg.itm_rerank_k)
      zero_shot = image_text_eval.zero_shot_evaluator(self.config, self.tokenizer, embed_image,
                                                      embed_text)
      self._evaluators = {
          **({"zero_shot": zero_shot} if zero_shot is not None else {}),
          "retrieval": image_text_eval.retrieval_evaluator(self.config, arrays, embed_image,
                                                           embed_text, **rerank)}
      self._retrieval_captions = arrays["captions"]
      if cfg.caption_images:
        count = min(cfg.caption_images, len(arrays["image"]))
        references = [[caption for caption, owner in zip(arrays["captions"],
                                                         arrays["text_to_image"]) if owner == i]
                      for i in range(count)]
        self._evaluators["captioning"] = CaptioningEvaluator(
            self._generate, self.tokenizer, arrays["image"][:count], references, cfg.batch_size)
    return self._evaluators

  def evaluate(self, params, mesh: Mesh) -> dict[str, float]:
    """Zero-shot top-1, R@K, `i2t_r@1_itm`, and the captions' `bleu4` and `cider_d`."""
    return {name: value for evaluator in self.evaluators().values()
            for name, value in evaluator.evaluate(params, mesh).items()}

  def write_artifacts(self, params, mesh: Mesh, workdir: pathlib.Path) -> list[pathlib.Path]:
    return image_text_eval.retrieval_artifacts(self.evaluators()["retrieval"],
                                               self._retrieval_captions, params, mesh, workdir)

  def _itm_scores(self, params, images: jax.Array, candidates: jax.Array) -> jax.Array:
    """Match logit minus no-match logit `[C, K]` of images `[C, H, W, 3]` with their candidate
    texts int `[C, K, L]` (the ITM head, i.e. the image-grounded encoder, as BLIP re-ranks)."""
    model, variables = self._model, {"params": params}
    image_tokens = model.apply(variables, images, method=BLIP.encode_image_tokens)
    count, k, length = candidates.shape
    logits = model.apply(variables, jnp.repeat(image_tokens, k, axis=0),
                         candidates.reshape(count * k, length), method=BLIP.itm_logits)
    return (logits[:, 1] - logits[:, 0]).reshape(count, k)

  def _generate(self, params, images: jax.Array) -> jax.Array:
    """Greedy caption tokens int32 `[B, max_new_tokens]` (EOS then padding) after BOS +
    prompt, for images `[B, H, W, 3]`."""
    tok = self.tokenizer
    prompt = np.concatenate([[tok.bos_id], self.prompt_ids]).astype(np.int32)
    prompt = jnp.broadcast_to(jnp.asarray(prompt), (images.shape[0], len(prompt)))
    cache = self._model.init_cache(params, images, prompt.shape[1] + self.max_new_tokens)
    step_fn = functools.partial(self._model.decode_step, params)
    return decoding.greedy(step_fn, cache, prompt, max_new_tokens=self.max_new_tokens,
                           eos_id=tok.eos_id, pad_id=tok.pad_id).tokens
