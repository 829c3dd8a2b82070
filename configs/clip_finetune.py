"""Fine-tune a public open_clip / OpenAI CLIP ViT checkpoint on your own JSONL image folder.

  mmjax train --config configs/clip_finetune.py:ViT-B-32.safetensors --workdir runs/finetune \
      --config.data.path=my_images/ --config.eval.class_names="('cat','dog')"

The text after ':' is the checkpoint (`.safetensors` / `.npz`; a PyTorch `.pt` / `.bin` is
refused with the one-line conversion to run first). The model is built from the file's tensor
shapes (`mmjax.convert.clip_config_from_state_dict`) and every parameter is copied from it at
step 0 (`init_from.checkpoint`); images are normalised inside the model with OpenAI's mean and
std, text uses CLIP's BPE ("clip"), the context length is the checkpoint's. Data, loss,
optimiser and evaluation are configs/clip_shapeworld.py's, with a fine-tuning learning rate.
"""
import ml_collections

import clip_shapeworld
import common

WHOLE_MODEL = ("image_encoder:image_encoder", "text_encoder:text_encoder",
               "image_proj:image_proj", "text_proj:text_proj", "logit_scale:logit_scale")


def get_config(checkpoint: str) -> ml_collections.ConfigDict:
  from mmjax.convert import clip_config_from_state_dict, read_state_dict_with_metadata
  from mmjax.convert.clip import quick_gelu_from_checkpoint
  import pathlib
  state, metadata = read_state_dict_with_metadata(checkpoint)
  quick_gelu = quick_gelu_from_checkpoint(pathlib.Path(checkpoint), metadata)
  facts = clip_config_from_state_dict(state, quick_gelu=quick_gelu)
  c = clip_shapeworld.get_config()
  c.batch_size = 64
  c.total_steps = 500
  c.data.update(dict(name="jsonl", path="data/my_images", image_size=facts["image_size"],
                     context_length=facts["context_length"], tokenizer="clip"))
  model = dict(facts["model"], image_mean=tuple(facts["image_mean"]),
               image_std=tuple(facts["image_std"]))
  c.model = ml_collections.ConfigDict(model)
  c.init_from = common.warm_start(WHOLE_MODEL)
  c.init_from.checkpoint = str(checkpoint)
  c.init_from.quick_gelu = quick_gelu
  c.optim = common.adamw(1e-5, warmup_steps=50, weight_decay=0.1)
  return c
