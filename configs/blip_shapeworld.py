"""Small BLIP (ITC + ITM + LM) on the embedded ShapeWorld data, on CLIP's budget.

  mmjax train --config configs/blip_shapeworld.py --workdir runs/blip

Everything but the model, its loss weights and its extra evals is configs/clip_shapeworld.py
(data, batch size, steps, optimizer, the ITC loss, zero-shot and retrieval evals), and BLIP's
ViT and text widths/depths are CLIP's towers, so retrieval R@1 compares with plain CLIP on the
same number of examples and steps (a BLIP step costs more compute:
experiments/blip_shapeworld/README.md).
"""
import ml_collections

import clip_shapeworld


def get_config() -> ml_collections.ConfigDict:
  c = clip_shapeworld.get_config()
  c.task = "blip"
  del c.grad_cache_chunks  # ITM mines negatives in the whole batch: no GradCache
  clip = c.model
  image, text = clip.image_encoder, clip.text_encoder

  # CLIP's towers; the text transformer adds a causal self-attention and a cross-attention per
  # block (shared by the ITM encoder and the LM decoder).
  c.model = ml_collections.ConfigDict(dict(
      name="blip", embed_dim=clip.embed_dim, dtype=clip.dtype,
      attention_impl=clip.attention_impl, remat=clip.remat, mlp_ratio=text.mlp_ratio,
      logit_scale_init=clip.logit_scale_init, stem_channels=image.stem_channels,
      patch_size=image.patch_size, vision_width=image.width, vision_layers=image.num_layers,
      vision_heads=image.num_heads, vision_pool=image.pool, text_width=text.width,
      text_layers=text.num_layers, text_heads=text.num_heads))

  # L = itc_weight L_ITC + itm_weight L_ITM + lm_weight L_LM; the ITC loss (kind, block_size,
  # sharded) exactly as the contrastive task computes it (only "clip" here). itm_positives:
  # pairs never mined as ITM negatives, "caption" (identical captions) or "label" (also the
  # same (colour, shape) class: in single-object scenes other captions of that class are mostly
  # paraphrases, i.e. false negatives, and the ITC similarity ranks them first). lm_prompt:
  # words prepended to every caption for the LM, given (not scored) when captioning; "" = none.
  c.loss.update(dict(itc_weight=1.0, itm_weight=1.0, lm_weight=1.0, itm_positives="label",
                     lm_prompt="a picture of"))

  # As CLIP's eval, plus: itm_rerank_k ITC candidates per image re-ranked by the ITM head
  # (i2t_r@1_itm; 0 = off) and greedy captions of the first caption_images retrieval images
  # (bleu4, cider_d against their 5 captions; 0 = off).
  c.eval.update(dict(itm_rerank_k=16, caption_images=100))
  return c
