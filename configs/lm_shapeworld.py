"""A small decoder-only language model on the embedded ShapeWorld text (captions, questions with
their answers, referring expressions): the LM that the unified decoder and Flamingo build on.

  mmjax train --config configs/lm_shapeworld.py --workdir runs/lm

Its parameters sit where the unified decoder keeps its LM, so a run warm-starts one
(configs/unified_shapeworld.py) with
--config.init_from.workdir=runs/lm
--config.init_from.params='("token_embed:token_embed", "pos_embed:pos_embed", "transformer:transformer", "lm_head:lm_head")'
when the widths, depths and vocabularies match (the caption and VQA variants; grounding adds
coordinate tokens to the vocabulary).

  mmjax train --config configs/lm_shapeworld.py:packed --workdir runs/lm_packed

is Flamingo's frozen LM (configs/flamingo_shapeworld.py): rows of 208 tokens packed with whole
texts (BOS t EOS BOS t EOS ...), so that all 208 learned positions train; an 8-shot caption
prompt with its answer takes about 200.
"""
import ml_collections

import common


VARIANTS = ("", "packed")
PACKED_CONTEXT_LENGTH = 208


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"configs/lm_shapeworld.py:VARIANT takes VARIANT in {VARIANTS}, got "
                     f"{variant!r}")
  packed = variant == "packed"
  # Packed rows of 208 tokens hold about 15 texts: 32 of them are 3.7 times the tokens of 128
  # single-text rows.
  c = common.trainer("language_model", batch_size=32 if packed else 128, total_steps=600,
                     eval_every=300, checkpoint_every=300)

  # 1-3 objects: the scenes of every ShapeWorld task. The longest text is a 3-object caption of
  # 20 words: with BOS and EOS, 22 tokens. Images are not read; 16 px keeps rendering cheap.
  c.data = common.shapeworld_data(image_size=16, num_objects=(1, 3),
                                  context_length=PACKED_CONTEXT_LENGTH if packed else 22)
  c.data.pack = packed

  # The shape of the Captioner's decoder (common.CAPTIONER): width 128, 2 layers, 4 heads, MLP
  # ratio 2, without its cross-attention.
  c.model = ml_collections.ConfigDict(dict(
      name="text_decoder", width=128, num_layers=2, num_heads=4, mlp_ratio=2.0,
      cross_attention=False, dtype="float32", attention_impl="einsum", remat=False))

  c.optim = common.adamw(1e-3)

  # num_images: first test images; all 11 texts of each are scored.
  c.eval = ml_collections.ConfigDict(dict(num_images=200, batch_size=256))
  return c
