"""The LLaVA-style unified decoder (`mmjax/models/unified.py`) on the embedded ShapeWorld tasks.

  mmjax train --config configs/unified_shapeworld.py:caption --workdir runs/unified_caption
  mmjax train --config configs/unified_shapeworld.py:vqa --workdir runs/unified_vqa
  mmjax train --config configs/unified_shapeworld.py:grounding --workdir runs/unified_grounding

The text after ':' picks the task. Each variant is that task's config (configs/
caption_shapeworld.py, configs/vqa_shapeworld.py:generative, configs/grounding_shapeworld.py:
tokens): the same data, steps, optimiser and evaluation, with the model swapped. The
Captioner's ViT stays as it is, so the comparison is about the fusion. Its cross-attending
decoder becomes one causal transformer of the same width and depth over
[image tokens; text tokens]: the ViT's tokens go through a 2-layer MLP projector, then into the
sequence before the text.

Two-stage recipe (LLaVA): warm-start the vision tower from a CLIP run (and the LM from a
text-only run of the same shape) and train the projector alone, then everything but the vision
tower:

  --config.init_from.workdir=runs/clip --config.init_from.params='("image_encoder:vision_encoder",)'
  --config.optim.trainable='("projector",)'                                       # stage 1
  --config.optim.trainable='("projector", "token_embed", "pos_embed", "transformer", "lm_head")'
"""
import ml_collections

import caption_shapeworld
import grounding_shapeworld
import vqa_shapeworld

# task -> its parent config (the Captioner-headed variant)
TASKS = {"caption": caption_shapeworld.get_config,
         "vqa": lambda: vqa_shapeworld.get_config("generative"),
         "grounding": lambda: grounding_shapeworld.get_config("tokens")}


def unified_decoder(captioner: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The unified decoder with `captioner`'s ViT and the width, depth and heads of its decoder."""
  c = captioner
  vision = dict(name="vision_transformer", stem_channels=tuple(c.stem_channels),
                patch_size=c.patch_size, width=c.vision_width, num_layers=c.vision_layers,
                num_heads=c.vision_heads, mlp_ratio=c.mlp_ratio)
  # image_positions: the ViT's tokens per image (class token included) for these configs'
  # image sizes is at most 65; 128 leaves room for --config.data.image_size changes.
  return ml_collections.ConfigDict(dict(
      name="unified_decoder", vision_encoder=vision, image_positions=128, projector="mlp",
      projector_depth=2, width=c.text_width, num_layers=c.text_layers,
      num_heads=c.text_heads, mlp_ratio=c.mlp_ratio, dtype=c.dtype,
      attention_impl=c.attention_impl, remat=c.remat))


def get_config(task: str = "caption") -> ml_collections.ConfigDict:
  if task not in TASKS:
    raise ValueError(f"configs/unified_shapeworld.py:TASK takes TASK in {sorted(TASKS)}, got "
                     f"{task!r}")
  c = TASKS[task]()
  c.model = unified_decoder(c.model)
  c.init_from.params = ("image_encoder:vision_encoder",)
  return c
