"""What the configs/*.py share: trainer settings, mesh, AdamW, ShapeWorld data, model towers.

A config starts from these pieces and states only what its experiment changes, so a diff of
two configs shows what differs between them:

  c = common.trainer("contrastive", batch_size=128, total_steps=600, eval_every=150,
                     checkpoint_every=300)
  c.data = common.shapeworld_data(image_size=64, num_objects=(1, 1), context_length=24)
  c.model = ConfigDict(dict(name="clip", ..., image_encoder=common.vision_transformer(pool="gap"),
                            text_encoder=common.text_transformer()))
  c.optim = common.adamw(2e-3)

Model dicts follow `mmjax/models/registry.py` (a `name`, then the module's fields). Keyword
overrides of `trainer`, `shapeworld_data` and `adamw` must name keys they have (a misspelt one
is a ValueError); the tower presets take any module field and the registry checks them.
`mmjax.train.config.load_config` puts this folder on sys.path, so configs `import common`.
"""
import ml_collections

ConfigDict = ml_collections.ConfigDict

# -1: the devices left over by the other axes.
MESH = dict(data=-1, fsdp=1, tensor=1)

# AdamW with linear warmup and cosine decay to end_lr_ratio x the peak (mmjax/train/optim.py).
# trainable: () trains every parameter; else "/"-path patterns of the parameters that train (the
# rest stay frozen), e.g. --config.optim.trainable='("projector", "transformer/gated_xattn_*")'
# (a tuple or list literal; a bare string is rejected).
ADAMW = dict(warmup_steps=50, end_lr_ratio=0.02, weight_decay=0.05, b1=0.9, b2=0.98, eps=1e-6,
             clip_grad_norm=1.0, trainable=())

# The ShapeWorld towers: two stride-2 convolutions then 2x2 patches give 64 image tokens at
# 64 px that already carry local shape features (plain patchify learned shape far more slowly:
# experiments/clip_shapeworld/README.md); width-128 text transformers.
VISION_TRANSFORMER = dict(name="vision_transformer", stem_channels=(16, 32), patch_size=2,
                          width=128, num_layers=3, num_heads=4, mlp_ratio=2.0)
TEXT_TRANSFORMER = dict(name="text_transformer", width=128, num_layers=3, num_heads=4,
                        mlp_ratio=2.0)
# The same ViT and a 2-layer decoder as the `Captioner`'s flat fields.
CAPTIONER = dict(name="captioner", stem_channels=(16, 32), patch_size=2, vision_width=128,
                 vision_layers=3, vision_heads=4, text_width=128, text_layers=2, text_heads=4,
                 mlp_ratio=2.0)


def _with(defaults: dict, overrides: dict, what: str) -> ConfigDict:
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise ValueError(f"{what} has no key {unknown[0]!r}; its keys are {sorted(defaults)}")
  return ConfigDict({**defaults, **overrides})


def trainer(task: str, *, batch_size: int, total_steps: int, eval_every: int,
            checkpoint_every: int) -> ConfigDict:
  """The trainer's settings for `task`, seed 0, logging every 25 steps, 2 checkpoints kept."""
  c = ConfigDict()
  c.task = task
  c.seed = 0
  c.batch_size = batch_size   # global; split over hosts and the data x fsdp mesh axes
  c.total_steps = total_steps
  c.log_every = 25
  c.eval_every = eval_every
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = 2
  c.mesh = ConfigDict(MESH)
  return c


# The keys a user's data needs (`mmjax/data/sources.py`), present in every data section so that
# `--config.data.name=jsonl --config.data.path=my_captions.jsonl` works on any config:
# name "shapeworld" | "jsonl" | "tfds"; path: the JSONL file/folder or the TFDS name; eval_path
# (else a held-out eval_fraction of the records); resize "center_crop" | "stretch"; tokenizer
# "shapeworld" | "bpe" (vocab_size, trained on the train captions) | "clip" | "clip:PATH" |
# "sentencepiece:PATH" | "hf:PATH".
USER_DATA = dict(path="", eval_path="", eval_fraction=0.05, resize="center_crop",
                 tokenizer="shapeworld", vocab_size=8192)
TFDS = dict(train_split="train", eval_split="validation", image_feature="image",
            caption_feature="captions/text", label_feature="", data_dir="")


def shapeworld_data(*, image_size: int, num_objects: tuple[int, int],
                    context_length: int | None = None) -> ConfigDict:
  """The embedded ShapeWorld stream (seed 0, 10M training examples); `context_length` (text
  rows' tokens) for tasks that read text. `on_bad_example` ("error" | "skip") and
  `max_bad_fraction` say what the training pipeline does with an unreadable example
  (`mmjax.data.pipeline`; ShapeWorld has none, a user's image folder may). The `USER_DATA`
  and `tfds` keys select a user's data instead."""
  data = dict(name="shapeworld", seed=0, image_size=image_size, num_objects=num_objects)
  if context_length is not None:
    data["context_length"] = context_length
  data["train_length"] = 10_000_000
  data["on_bad_example"] = "error"
  data["max_bad_fraction"] = 0.01
  data.update(USER_DATA, tfds=ConfigDict(TFDS))
  return ConfigDict(data)


def zero_shot_classes() -> dict:
  """`eval` keys for zero-shot on a user's data: class_names (list of str, indexed by the
  records' int `label`) and templates (format strings with "{}"); empty: no zero-shot metric
  (ShapeWorld uses its own 48 classes)."""
  return dict(class_names=(), templates=("a photo of a {}.",))


def adamw(learning_rate: float, **overrides) -> ConfigDict:
  """AdamW at peak `learning_rate`, the rest `ADAMW` with `overrides` (keys of ADAMW)."""
  return _with(dict(name="adamw", learning_rate=learning_rate, **ADAMW), overrides,
               "common.adamw")


def vision_transformer(**fields) -> dict:
  """`VISION_TRANSFORMER` with `fields` (VisionTransformer fields) changed or added."""
  return {**VISION_TRANSFORMER, **fields}


def text_transformer(**fields) -> dict:
  """`TEXT_TRANSFORMER` with `fields` (TextTransformer fields) changed or added."""
  return {**TEXT_TRANSFORMER, **fields}


def fusion_text_encoder(**fields) -> dict:
  """A 2-layer bidirectional text encoder that cross-attends to the image tokens in every
  block and pools its first (BOS) token: VQA's question and grounding's expression encoder."""
  return text_transformer(**{**dict(num_layers=2, causal=False, pool="first",
                                    cross_attention=True), **fields})


def captioner(**fields) -> dict:
  """`CAPTIONER` with `fields` (Captioner fields) changed or added."""
  return {**CAPTIONER, **fields}


def warm_start(params: tuple[str, ...] = ("image_encoder:image_encoder",)) -> ConfigDict:
  """`init_from` (mmjax/train/warm_start.py), off until `init_from.workdir` names a run: by
  default the image tower of a trained configs/clip_shapeworld.py run."""
  return ConfigDict(dict(workdir="", config="", step=-1, params=params))
