"""Fine-tuning a public CLIP file (configs/clip_finetune.py): the model is built from the file's
shapes, step 0 holds exactly the converted weights, the model normalises [0, 1] images as the
checkpoint expects, and a checkpoint of another architecture is refused naming what differs."""
import jax
import numpy as np
import pytest
import safetensors.numpy

from conftest import ROOT
from mmjax.convert import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, load_clip
from mmjax.convert.clip import expected_shapes
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.trainer import train
from test_user_data_tasks import write_folder

ARCH = dict(vision_width=64, vision_layers=1, vision_heads=1, vision_mlp_ratio=2.0,
            patch_size=8, image_size=16, text_width=64, text_layers=1, text_heads=1,
            text_mlp_ratio=2.0, context_length=12, vocab_size=49408, embed_dim=8)


def write_checkpoint(path, arch=ARCH, seed=0):
  rng = np.random.default_rng(seed)
  state = {key: (0.3 * rng.standard_normal(shape)).astype(np.float32)
           for key, shape in expected_shapes(arch).items()}
  state["logit_scale"] = np.asarray(np.log(1 / 0.05), np.float32)
  safetensors.numpy.save_file(state, str(path), metadata={"mlp_activation": "quick_gelu"})
  return path


def finetune_config(checkpoint, data_root, *extra):
  return apply_overrides(load_config(f"{ROOT / 'configs' / 'clip_finetune.py'}:{checkpoint}"), [
      f"data.path={data_root}", "data.eval_fraction=0.25", "batch_size=8", "total_steps=1",
      "log_every=1", "eval_every=1000", "checkpoint_every=1000", "optim.warmup_steps=1",
      "optim.learning_rate=0.0", "optim.weight_decay=0.0",
      "eval.class_names=('red','green','blue')", "eval.zero_shot_images=8",
      "eval.retrieval_images=8", "eval.batch_size=8", *extra])


def test_step_zero_is_the_converted_checkpoint(tmp_path):
  checkpoint = write_checkpoint(tmp_path / "tiny_clip.safetensors")
  config = finetune_config(checkpoint, write_folder(tmp_path / "data", 16))
  assert config.data.image_size == 16 and config.data.context_length == 12
  assert config.model.mlp_activation == "quick_gelu"
  # lr 0 and no weight decay: after one step the params are still the step-0 params.
  result = train(config, tmp_path / "run", devices=jax.devices()[:1], progress=False)
  model, expected = load_clip(checkpoint)
  got = jax.tree.map(np.asarray, result.state.params)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert sorted(map(str, flat_got)) == sorted(map(str, flat_expected))
  for path, value in flat_expected.items():
    np.testing.assert_array_equal(flat_got[path], value, err_msg=jax.tree_util.keystr(path))
  # The fine-tuned model takes [0, 1] images; load_clip's model takes them normalised.
  from mmjax.train.tasks import get_task_class
  task = get_task_class(config.task)(config)
  images = np.random.default_rng(1).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  normalised = (images - np.asarray(OPENAI_CLIP_MEAN)) / np.asarray(OPENAI_CLIP_STD)
  np.testing.assert_allclose(
      task.model.apply({"params": got}, images, method=task.model.encode_image),
      model.apply({"params": expected}, normalised.astype(np.float32),
                  method=model.encode_image), atol=1e-5)
  assert "zeroshot_top1" in result.eval_metrics


def test_a_checkpoint_with_another_vocabulary_is_refused(tmp_path):
  checkpoint = write_checkpoint(tmp_path / "small_vocab.safetensors",
                                dict(ARCH, vocab_size=500))
  config = finetune_config(checkpoint, write_folder(tmp_path / "data", 16))
  with pytest.raises(ValueError, match=r"token_embed.*source float32\[500, 64\] vs this run "
                                       r"float32\[49408, 64\]"):
    train(config, tmp_path / "run", devices=jax.devices()[:1], progress=False)
