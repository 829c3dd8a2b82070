"""Config loading and CLI overrides; every configs/*.py derives from configs/common.py and
builds its task's model."""
import ast
import importlib.util
import subprocess
import sys

import pytest

from mmjax.models import get_model_class
from mmjax.train.config import apply_overrides, flat_keys, load_config
from mmjax.train.tasks import get_task_class

from conftest import CONFIG, ROOT


def test_overrides_are_typed():
  config = apply_overrides(load_config(CONFIG), [
      "batch_size=64", "optim.learning_rate=1", "model.remat=true", "data.num_objects=[1,2]",
      "loss.block_size=32", "model.dtype=bfloat16"])
  assert config.batch_size == 64
  assert isinstance(config.optim.learning_rate, float) and config.optim.learning_rate == 1.0
  assert config.model.remat is True
  assert config.data.num_objects == (1, 2)
  assert config.loss.block_size == 32
  assert config.model.dtype == "bfloat16"


def test_unknown_key_lists_valid_keys():
  config = load_config(CONFIG)
  with pytest.raises(ValueError, match="unknown config key 'batch_sise'") as info:
    apply_overrides(config, ["batch_sise=3"])
  for key in flat_keys(config):
    assert key in str(info.value)


def test_wrong_type_is_an_error():
  with pytest.raises(ValueError, match="bad value for config key 'batch_size'"):
    apply_overrides(load_config(CONFIG), ["batch_size=abc"])


def test_missing_config_file():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_config(ROOT / "configs" / "nope.py")


def test_cli_rejects_unknown_key(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "mmjax.cli", "train", "--config", str(CONFIG), "--workdir",
       str(tmp_path / "w"), "--config.modle.width=3"], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2
  assert "unknown config key 'modle.width'" in proc.stderr
  assert "model.image_encoder.width" in proc.stderr
  assert not (tmp_path / "w").exists()  # nothing was created for a bad command


CONFIGS = sorted((ROOT / "configs").glob("*_shapeworld.py"))
# Every config but common.py, including those that read a user's data (clip_digits, clip_finetune).
ALL_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "common.py")
VARIANTS = [str(path) for path in CONFIGS] + [
    f"{ROOT / 'configs' / 'vqa_shapeworld.py'}:generative",
    f"{ROOT / 'configs' / 'grounding_shapeworld.py'}:tokens",
    f"{ROOT / 'configs' / 'lm_shapeworld.py'}:packed"]
# ldm's default autoencoder.workdir is a run to be trained first; "" is pixel space.
NEEDS_RUNS = {"ldm_shapeworld.py": ["autoencoder.workdir="]}


@pytest.mark.parametrize("spec", VARIANTS, ids=lambda spec: spec.rsplit("/", 1)[-1])
def test_every_config_builds_its_task(spec):
  config = load_config(spec)
  config = apply_overrides(config, NEEDS_RUNS.get(spec.rsplit("/", 1)[-1], []))
  task = get_task_class(config.task)(config)  # the registry checks every model key
  assert type(task.model) is get_model_class(config.model.name)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda path: path.name)
def test_every_config_derives_from_common_and_documents_its_command(path):
  tree = ast.parse(path.read_text())
  docstring = ast.get_docstring(tree)
  assert docstring and f"--config configs/{path.name}" in docstring
  imported = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names}
  assert imported & {"common", "t2i_shapeworld", "clip_shapeworld", "caption_shapeworld",
                      "av_shapeworld"}, imported
  assert "load_config" not in path.read_text()  # parents are imported, not loaded by path


def test_derived_configs_import_their_parent_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs/ is found through the file's folder, not the cwd
  pixel = load_config(f"{ROOT / 'configs' / 't2i_shapeworld.py'}:unet")
  ldm = load_config(ROOT / "configs" / "ldm_shapeworld.py")
  assert ldm.model.denoiser.attention_levels == (0, 1)
  assert pixel.model.denoiser.attention_levels == (1,)
  assert ldm.optim == pixel.optim and ldm.model.text == pixel.model.text
  assert "common" not in sys.modules and "t2i_shapeworld" not in sys.modules


@pytest.mark.parametrize("task, parent", [("caption", "caption_shapeworld.py"),
                                          ("vqa", "vqa_shapeworld.py:generative"),
                                          ("grounding", "grounding_shapeworld.py:tokens")])
def test_unified_configs_are_their_tasks_but_for_the_model(task, parent):
  unified = load_config(f"{ROOT / 'configs' / 'unified_shapeworld.py'}:{task}")
  base = load_config(f"{ROOT / 'configs' / parent}")
  assert unified.task == base.task
  for key in set(base) - {"model", "init_from"}:
    assert unified[key] == base[key], key
  assert unified.init_from.params == ("image_encoder:vision_encoder",)
  vision, captioner = unified.model.vision_encoder, base.model
  assert (vision.patch_size, vision.width, vision.num_layers, tuple(vision.stem_channels)) == (
      captioner.patch_size, captioner.vision_width, captioner.vision_layers,
      tuple(captioner.stem_channels))
  assert (unified.model.width, unified.model.num_layers) == (captioner.text_width,
                                                             captioner.text_layers)


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_llava_stages_are_the_unified_config_but_for_what_trains_and_where_it_starts(task):
  path = ROOT / "configs" / "unified_shapeworld.py"
  plain, one, two = (load_config(f"{path}:{task}{s}") for s in ("", "_stage1", "_stage2"))
  lm = load_config(ROOT / "configs" / "lm_shapeworld.py")
  for key in set(plain) - {"init_from", "optim", "data", "total_steps", "checkpoint_every",
                           "model"}:
    assert one[key] == plain[key] == two[key], key
  assert one.model == two.model
  for key in set(plain.model) - {"vision_encoder"}:
    assert one.model[key] == plain.model[key], key
  # Both stages take the CLIP run's tower, at its image size (captioning's own is 32 px).
  clip = load_config(CONFIG)
  for key in one.model.vision_encoder:
    assert one.model.vision_encoder[key] == clip.model.image_encoder[key], key
  assert one.data.image_size == two.data.image_size == clip.data.image_size
  assert one.total_steps == plain.total_steps // 2 and two.total_steps == plain.total_steps
  assert one.data.context_length == two.data.context_length == lm.data.context_length
  assert tuple(one.optim.trainable) == ("projector",)
  assert set(two.optim.trainable) == {"projector", "token_embed", "pos_embed", "transformer",
                                      "lm_head"}
  assert one.init_from.vision.params == ("image_encoder:vision_encoder",)
  assert {p.split(":")[0] for p in one.init_from.lm.params} == {
      "token_embed", "pos_embed", "transformer", "lm_head"}
  assert {p.split(":")[0] for p in two.init_from.stage1.params} == {
      "vision_encoder", "projector", "token_embed", "pos_embed", "transformer", "lm_head"}
  for key in ("width", "num_layers", "num_heads", "mlp_ratio"):
    assert plain.model[key] == lm.model[key], key


def test_llava_grounding_stage1_grows_the_lms_vocabulary_by_the_bins_and_trains_their_rows():
  path = ROOT / "configs" / "unified_shapeworld.py"
  one, two = (load_config(f"{path}:grounding{s}") for s in ("_stage1", "_stage2"))
  assert tuple(one.init_from.lm.extend) == ("token_embed", "lm_head")
  assert set(one.optim.trainable) == {"projector", "token_embed", "lm_head"}
  assert set(two.optim.trainable) == {"projector", "token_embed", "pos_embed", "transformer",
                                      "lm_head"}
  assert "extend" not in two.init_from.stage1   # stage 1's vocabulary is already grown


def test_flamingo_takes_its_lm_and_vision_tower_from_the_runs_it_warm_starts_from():
  from mmjax.models.flamingo import TRAINABLE
  flamingo = load_config(ROOT / "configs" / "flamingo_shapeworld.py")
  lm = load_config(f"{ROOT / 'configs' / 'lm_shapeworld.py'}:packed")
  clip = load_config(CONFIG)
  assert lm.data.pack and flamingo.model.max_length == lm.data.context_length
  for key in ("width", "num_layers", "num_heads", "mlp_ratio"):
    assert flamingo.model[key] == lm.model[key], key
  assert flamingo.model.vision_encoder == clip.model.image_encoder
  assert flamingo.data.image_size == clip.data.image_size
  assert tuple(flamingo.optim.trainable) == TRAINABLE
  lm_paths = {pair.split(":")[1].split("/")[0] for pair in flamingo.init_from.lm.params}
  assert lm_paths == {"token_embed", "pos_embed", "lm_head", "transformer"}
  assert flamingo.init_from.vision.params == ("image_encoder:vision_encoder",)
  # ":binding" is the default with binding words and half the rows binding rows, nothing else.
  binding = load_config(f"{ROOT / 'configs' / 'flamingo_shapeworld.py'}:binding")
  assert flamingo.data.binding.words == 0 and flamingo.data.row_kinds.binding == 0
  assert binding.to_dict() == apply_overrides(flamingo, ["data.binding.words=8",
                                                         "data.row_kinds.binding=2.0"]).to_dict()


def test_blip_is_clip_but_for_its_model_loss_weights_and_evals():
  clip, blip = load_config(CONFIG), load_config(ROOT / "configs" / "blip_shapeworld.py")
  for key in ("seed", "batch_size", "total_steps", "eval_every", "mesh", "data", "optim"):
    assert blip[key] == clip[key], key
  assert {k: blip.loss[k] for k in clip.loss} == clip.loss.to_dict()
  assert {k: blip.eval[k] for k in clip.eval} == clip.eval.to_dict()
  assert "grad_cache_chunks" not in blip  # BLIP's ITM needs the whole batch: no GradCache
  image, text = clip.model.image_encoder, clip.model.text_encoder
  assert (blip.model.vision_width, blip.model.vision_layers, blip.model.patch_size,
          blip.model.text_width, blip.model.text_layers) == (
              image.width, image.num_layers, image.patch_size, text.width, text.num_layers)


def test_config_variants():
  vqa = ROOT / "configs" / "vqa_shapeworld.py"
  assert load_config(vqa).model.name == "vqa_classifier"
  assert load_config(f"{vqa}:generative").model.name == "captioner"
  with pytest.raises(ValueError, match=r"clip_shapeworld.py' takes no argument, got 'big'"):
    load_config(f"{CONFIG}:big")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_config(ROOT / "configs" / "nope.py:big")


def test_misspelt_model_key_is_an_error_naming_the_fields():
  config = load_config(CONFIG)
  config.model.image_encoder.widht = 32  # a ConfigDict accepts new keys; the registry does not
  with pytest.raises(ValueError, match=r"unknown config key model.image_encoder.widht: "
                     r"VisionTransformer's fields are \[.*'width'"):
    get_task_class(config.task)(config)


def test_common_rejects_misspelt_keys():
  spec = importlib.util.spec_from_file_location("common_under_test", ROOT / "configs" / "common.py")
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  assert common.adamw(1e-3, b2=0.99).b2 == 0.99
  with pytest.raises(ValueError, match=r"common.adamw has no key 'warmup'; its keys are"):
    common.adamw(1e-3, warmup=10)


# The overrides experiments/ofa_shapeworld's runs were launched with, which the variants name.
OFA_VARIANT_OVERRIDES = {
    "grounding_first": ["tasks.caption=0", "tasks.vqa=0", "total_steps=600", "eval_every=600",
                        "batch_size=64", "data.rows_per_image=1"],
    "every": ["batch_size=64", "data.row_tasks=every",
              "init_from.params=('vision_encoder:vision_encoder','encoder:encoder',"
              "'decoder:decoder')"]}


@pytest.mark.parametrize("variant", sorted(OFA_VARIANT_OVERRIDES))
def test_ofa_variants_are_the_default_with_the_overrides_their_runs_used(variant):
  path = ROOT / "configs" / "ofa_shapeworld.py"
  named = load_config(f"{path}:{variant}")
  overridden = apply_overrides(load_config(path), OFA_VARIANT_OVERRIDES[variant])
  assert named.to_dict() == overridden.to_dict()
  with pytest.raises(ValueError, match=r"takes one of \('grounding_first', 'every'\).*"
                                       r"got 'evry'"):
    load_config(f"{path}:evry")


def test_ofa_every_warm_starts_every_top_level_parameter_of_the_model():
  import jax
  import jax.numpy as jnp
  from mmjax.models import build_model
  every = load_config(f"{ROOT / 'configs' / 'ofa_shapeworld.py'}:every")
  vision = dict(name="vision_transformer", patch_size=8, width=12, num_layers=1, num_heads=2,
                mlp_ratio=2.0)
  model = build_model(dict(name="ofa", vision_encoder=vision, image_positions=8, width=16,
                           encoder_layers=1, decoder_layers=1, num_heads=2, mlp_ratio=2.0),
                      vocab_size=30, max_length=8, source_length=9)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                          jnp.ones((1, 9), jnp.int32), jnp.ones((1, 8), jnp.int32))
  pairs = [p.split(":") for p in every.init_from.params]
  assert all(source == target for source, target in pairs)
  assert sorted(source for source, _ in pairs) == sorted(shapes["params"])
