"""OFA on the embedded ShapeWorld data: one encoder-decoder trained on captioning, VQA and
grounding instructions at once, evaluated on each task as its dedicated head is.

  mmjax train --config configs/ofa_shapeworld.py --workdir runs/ofa

Variants (experiments/ofa_shapeworld measured each on 2 CPU cores):
* ":grounding_first": OFA on grounding alone, 600 steps of 64 images (6 min 11 s).
* ":every": every task on each of 64 images a step (`data.row_tasks=every`), 1500 steps. From
  scratch it misses grounding (0.114, 30 min). Started from a ":grounding_first" run it meets
  the dedicated heads on all three tasks with one set of weights (28 min 31 s):

    mmjax train --config configs/ofa_shapeworld.py:grounding_first --workdir runs/ofa_ground
    mmjax train --config configs/ofa_shapeworld.py:every --workdir runs/ofa_every \
        --config.init_from.workdir=runs/ofa_ground

  (`--config.loss_weights.grounding=3.0` instead of the first run: one 31-minute run that
  meets grounding and VQA and sits at the bar on captioning's shape accuracy.)

The data, location bins and evaluation sets are the dedicated tasks' (configs/
vqa_shapeworld.py, configs/grounding_shapeworld.py:tokens, configs/caption_shapeworld.py): the
64 px, 1-3 object scenes of VQA and grounding (captioning's own config renders 32 px, 1-2
object scenes), the first 500 test images captioned, all 5 questions of the first 200, the
expressions of the first 500. The ViT is theirs; the transformer is as wide and as deep as
their decoders, with an encoder of the same depth over [image; instruction] in front.
"""
import ml_collections

import caption_shapeworld
import common
import grounding_shapeworld
import vqa_shapeworld


# Every top-level parameter of `OFA`: ":every" copies all of them from its warm-start run.
OFA_PARAMS = ("vision_encoder", "encoder", "decoder")
VARIANTS = ("", "grounding_first", "every")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"configs/ofa_shapeworld.py:VARIANT takes one of {VARIANTS[1:]} (or "
                     f"nothing), got {variant!r}")
  caption = caption_shapeworld.get_config()
  vqa = vqa_shapeworld.get_config("generative")
  grounding = grounding_shapeworld.get_config("tokens")

  # batch_size counts images; each carries rows_per_image (3) instruction rows, so a step
  # trains on 96 rows. 1500 steps fit the 30-minute budget of one run on 2 CPU cores.
  c = common.trainer("multitask", batch_size=32, total_steps=1500, eval_every=500,
                     checkpoint_every=500)

  c.data = vqa.data
  c.data.rows_per_image = 3
  # "sampled": each row's task drawn by c.tasks; "every": row k is the k-th task of positive
  # probability (mod their number), so with 3 rows every image is captioned, asked and grounded.
  c.data.row_tasks = "sampled"
  # The target: BOS + a 3-object caption of up to 20 words + EOS. The instruction: BOS + a
  # question of up to 14 words (or the grounding prompt around a 5-word expression) + EOS.
  c.data.context_length = 22
  c.data.source_length = 18
  # The decoder's prompt (mmjax/train/tasks/multitask.py): "none" (BOS) or "prev_output" (BOS +
  # the instruction's words, OFA's option of that name), which needs data.context_length=40.
  c.prompt_type = "none"

  # Row probabilities per task and the loss weights lambda_t (L = sum_t lambda_t L_t).
  c.tasks = ml_collections.ConfigDict(dict(caption=1.0, vqa=1.0, grounding=1.0))
  c.loss_weights = ml_collections.ConfigDict(dict(caption=1.0, vqa=1.0, grounding=1.0))
  c.num_bins = grounding.num_bins  # location bins per axis, last in the vocabulary
  c.bin_sigma = grounding.bin_sigma  # Gaussian width of the bins' targets (0: one-hot)

  d = vqa.model
  c.model = ml_collections.ConfigDict(dict(
      name="ofa", vision_encoder=common.vision_transformer(), image_positions=128,
      image_position_embedding="learned",
      width=d.text_width, encoder_layers=d.text_layers, decoder_layers=d.text_layers,
      num_heads=d.text_heads, mlp_ratio=d.mlp_ratio, dtype=d.dtype,
      attention_impl=d.attention_impl, remat=d.remat))

  # Warm start: --config.init_from.workdir=runs/clip copies a configs/clip_shapeworld.py run's
  # image tower (the same ViT).
  c.init_from = common.warm_start(("image_encoder:vision_encoder",))
  c.optim = vqa.optim

  c.eval = ml_collections.ConfigDict(dict(
      num_images=caption.eval.num_images, num_questions=vqa.eval.num_examples,
      num_expressions=grounding.eval.num_examples, batch_size=100))

  if variant:  # 64 images a step, each of their tasks on every image
    c.batch_size = 64
  if variant == "grounding_first":
    c.tasks.caption = c.tasks.vqa = 0.0
    c.data.rows_per_image = 1
    c.total_steps = c.eval_every = 600
  if variant == "every":
    c.data.row_tasks = "every"
    c.init_from.params = tuple(f"{p}:{p}" for p in OFA_PARAMS)
  return c
