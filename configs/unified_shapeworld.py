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

Two-stage training (LLaVA), e.g. for VQA ("caption_stage1", ... likewise):

  mmjax train --config configs/clip_shapeworld.py --workdir runs/clip
  mmjax train --config configs/lm_shapeworld.py --workdir runs/lm
  mmjax train --config configs/unified_shapeworld.py:vqa_stage1 --workdir runs/llava_1 \
      --config.init_from.vision.workdir=runs/clip --config.init_from.lm.workdir=runs/lm
  mmjax train --config configs/unified_shapeworld.py:vqa_stage2 --workdir runs/llava_2 \
      --config.init_from.stage1.workdir=runs/llava_1

Stage 1 trains the projector alone between the frozen CLIP vision tower and the frozen
text-only LM (configs/lm_shapeworld.py: same width, depth and vocabulary; the rows take the
LM's 22 positions); stage 2 starts from all of stage 1 and trains everything but the vision
tower. The caption stages take the CLIP run's tower and its 64 px, 1-3 object scenes. For
grounding, whose vocabulary adds location bins after the LM's words, stage 1
copies the LM's word rows into the grown token embedding and output head
(`init_from.lm.extend`) and trains those two as well, since the bins' rows start untrained.

Measured wall times on 2 CPU cores (experiments/multimodal_lms): stage 1 / stage 2 take
1 min 38 s / 2 min 49 s for captioning, 3 min 47 s / 9 min 37 s for VQA (128 questions a
step) and 1 min 56 s / 3 min 52 s for grounding; the CLIP run 6 min 49 s, the LM 1 min 26 s.
"""
import ml_collections

import caption_shapeworld
import clip_shapeworld
import common
import grounding_shapeworld
import lm_shapeworld
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
  # image_position_embedding: "learned" or "sincos" (fixed 2-D grid positions).
  return ml_collections.ConfigDict(dict(
      name="unified_decoder", vision_encoder=vision, image_positions=128,
      image_position_embedding="learned", projector="mlp", projector_depth=2,
      width=c.text_width, num_layers=c.text_layers,
      num_heads=c.text_heads, mlp_ratio=c.mlp_ratio, dtype=c.dtype,
      attention_impl=c.attention_impl, remat=c.remat))


LM_PARAMS = ("token_embed", "pos_embed", "transformer", "lm_head")
STAGES = {"": None, "_stage1": ("projector",), "_stage2": ("projector",) + LM_PARAMS}


def get_config(variant: str = "caption") -> ml_collections.ConfigDict:
  task, stage = next(((variant[:-len(s)] if s else variant, s) for s in STAGES
                      if s and variant.endswith(s)), (variant, ""))
  if task not in TASKS:
    raise ValueError(f"configs/unified_shapeworld.py:VARIANT takes TASK or TASK_stage1 / "
                     f"TASK_stage2 with TASK in {sorted(TASKS)}, got {variant!r}")
  c = TASKS[task]()
  c.model = unified_decoder(c.model)
  c.init_from.params = ("image_encoder:vision_encoder",)
  if not stage:
    return c
  c.optim.trainable = STAGES[stage]
  pairs = lambda names: tuple(f"{name}:{name}" for name in names)
  if task == "caption":
    # The CLIP tower is a 3-layer, patch-2 ViT over 64 px; the Captioner's config is 32 px,
    # 1-2 objects with a 2-layer ViT. The stages caption OFA's scenes (64 px, 1-3 objects)
    # with CLIP's tower, as the 64 px Captioner of experiments/ofa_shapeworld does.
    clip = clip_shapeworld.get_config()
    tower = clip.model.image_encoder
    c.model.vision_encoder.update(dict(
        stem_channels=tuple(tower.stem_channels), patch_size=tower.patch_size,
        width=tower.width, num_layers=tower.num_layers, num_heads=tower.num_heads,
        mlp_ratio=tower.mlp_ratio))
    c.data.image_size, c.data.num_objects = clip.data.image_size, (1, 3)
  if stage == "_stage1" and task == "grounding":
    # The location bins are new tokens after the LM's words: their embedding and output rows
    # start untrained, so stage 1 trains the token embedding and the output head too.
    c.optim.trainable = STAGES[stage] + ("token_embed", "lm_head")
  if stage == "_stage1":
    # Half the task's steps: only the projector learns, to map image tokens into the LM.
    c.total_steps = c.total_steps // 2
    c.checkpoint_every = c.total_steps
    # The LM's rows are 22 tokens: the task's rows (<= 22) take the same positions.
    c.data.context_length = lm_shapeworld.get_config().data.context_length
    c.init_from = ml_collections.ConfigDict(dict(
        vision=common.warm_start(("image_encoder:vision_encoder",)),
        lm=common.warm_start(pairs(LM_PARAMS))))
    if task == "grounding":  # the LM's word rows fill the leading rows of the grown vocabulary
      c.init_from.lm.extend = ("token_embed", "lm_head")
  else:
    c.data.context_length = get_config(f"{task}_stage1").data.context_length
    c.init_from = ml_collections.ConfigDict(dict(
        stage1=common.warm_start(pairs(("vision_encoder", "projector") + LM_PARAMS))))
  return c
