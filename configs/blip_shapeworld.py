"""Small BLIP (ITC + ITM + LM) on the embedded ShapeWorld data, on CLIP's budget.

  mmjax train --config configs/blip_shapeworld.py --workdir runs/blip

Data, batch size, steps, optimizer, ViT and text widths/depths are those of
configs/clip_shapeworld.py, so retrieval R@1 compares with plain CLIP on the same number of
examples and steps (a BLIP step costs more compute: experiments/blip_shapeworld/README.md).
"""
import math

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "blip"
  c.seed = 0
  c.batch_size = 128          # global; ITM negatives are mined over the whole global batch
  c.total_steps = 600
  c.log_every = 25
  c.eval_every = 150
  c.checkpoint_every = 300
  c.keep_checkpoints = 2
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # As configs/clip_shapeworld.py: single-object scenes, the same caption stream.
  c.data = ml_collections.ConfigDict(dict(
      name="shapeworld", seed=0, image_size=64, num_objects=(1, 1), context_length=24,
      train_length=10_000_000))

  # CLIP's towers; the text transformer adds a causal self-attention and a cross-attention per
  # block (shared by the ITM encoder and the LM decoder).
  c.model = ml_collections.ConfigDict(dict(
      embed_dim=128, dtype="float32", attention_impl="einsum", remat=False, mlp_ratio=2.0,
      logit_scale_init=math.log(1 / 0.07),
      image=dict(stem_channels=(16, 32), patch_size=2, width=128, layers=3, heads=4, pool="gap"),
      text=dict(width=128, layers=3, heads=4)))

  # L = itc_weight L_ITC + itm_weight L_ITM + lm_weight L_LM. kind/block_size/sharded: the ITC
  # loss exactly as the contrastive task computes it (only "clip" here). itm_positives: pairs
  # never mined as ITM negatives, "caption" (identical captions) or "label" (also the same
  # (colour, shape) class: in single-object scenes other captions of that class are mostly
  # paraphrases, i.e. false negatives, and the ITC similarity ranks them first). lm_prompt:
  # words prepended to every caption for the LM, given (not scored) when captioning; "" = none.
  c.loss = ml_collections.ConfigDict(dict(
      kind="clip", block_size=None, sharded=False, itc_weight=1.0, itm_weight=1.0,
      lm_weight=1.0, itm_positives="label", lm_prompt="a picture of"))
  c.loss.block_size = ml_collections.FieldReference(None, field_type=int)

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=2e-3, warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05,
      b1=0.9, b2=0.98, eps=1e-6, clip_grad_norm=1.0))

  # As CLIP's eval, plus: itm_rerank_k ITC candidates per image re-ranked by the ITM head
  # (i2t_r@1_itm; 0 = off) and greedy captions of the first caption_images retrieval images
  # (bleu4, cider_d against their 5 captions; 0 = off).
  c.eval = ml_collections.ConfigDict(dict(zero_shot_images=1000, retrieval_images=500,
                                          batch_size=256, itm_rerank_k=16, caption_images=100))
  return c
