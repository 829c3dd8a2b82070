"""Warm start (`init_from`): a VQA run starts from a trained CLIP run's image tower, exactly;
mismatched towers and unknown subtrees fail clearly; a resumed run does not warm-start again."""
import ast
import shutil

import jax
import numpy as np
import pytest

from mmjax.train import restore, trainer
from mmjax.train.config import apply_overrides, load_config
from mmjax.train.tasks.vqa import VQATask
from mmjax.train.trainer import train
from mmjax.train.warm_start import parse_mapping

from conftest import ROOT, tiny_config

# The tiny CLIP image tower of conftest.TINY, for a VQA model at the same image size.
VQA_TINY = [
    "batch_size=8", "total_steps=1", "log_every=1", "eval_every=1000", "checkpoint_every=1",
    "data.image_size=16", "model.image_encoder.stem_channels=(4,)",
    "model.image_encoder.patch_size=4", "model.image_encoder.width=16",
    "model.image_encoder.num_layers=1", "model.image_encoder.num_heads=2",
    "model.question_encoder.width=16", "model.question_encoder.num_layers=1",
    "model.question_encoder.num_heads=2", "model.hidden_dim=16", "eval.num_examples=10",
    "eval.batch_size=5",
    # Learning rate 0: updates are exactly zero, so after training the params are the
    # warm-started ones.
    "optim.warmup_steps=0", "optim.learning_rate=0.0",
]


def vqa_config(*extra):
  return apply_overrides(load_config(ROOT / "configs" / "vqa_shapeworld.py"),
                         VQA_TINY + list(extra))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
  """A 2-step tiny CLIP run with its config.json, as `mmjax train` leaves it."""
  workdir = tmp_path_factory.mktemp("clip")
  config = tiny_config("total_steps=2", "checkpoint_every=2")
  result = train(config, workdir, devices=jax.devices()[:1], progress=False)
  return workdir, result


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_vqa_starts_from_the_clip_image_tower_and_resume_does_not_reload(clip_run, tmp_path):
  clip_workdir, clip_result = clip_run
  # The source lives in a copy, deleted before the resume: a resumed run must not read it.
  source = tmp_path / "clip_copy"
  shutil.copytree(clip_workdir, source)
  workdir = tmp_path / "vqa"
  config = vqa_config(f"init_from.workdir={source}")
  result = train(config, workdir, devices=jax.devices()[:2], progress=False)
  _assert_trees_equal(result.state.params["image_encoder"],
                      clip_result.state.params["image_encoder"])
  fresh = VQATask(config).init_params(jax.random.key(config.seed))["image_encoder"]
  assert not np.allclose(fresh["pos_embed"].unbox(), clip_result.state.params["image_encoder"]["pos_embed"])

  shutil.rmtree(source)
  resumed = train(vqa_config(f"init_from.workdir={source}", "total_steps=2"), workdir,
                  devices=jax.devices()[:2], progress=False)
  assert resumed.step == 2


def test_mismatched_tower_and_unknown_subtree_fail_clearly(clip_run, tmp_path):
  workdir, _ = clip_run
  with pytest.raises(ValueError, match=r"subtrees differ.*this run float32\[.*32"):
    train(vqa_config(f"init_from.workdir={workdir}", "model.image_encoder.width=32"), tmp_path / "a",
          devices=jax.devices()[:1], progress=False)
  with pytest.raises(KeyError, match=r"no 'vision'.*image_encoder"):
    train(vqa_config(f"init_from.workdir={workdir}", "init_from.params=('vision:image_encoder',)"),
          tmp_path / "b", devices=jax.devices()[:1], progress=False)
  with pytest.raises(FileNotFoundError, match="config.json"):
    train(vqa_config(f"init_from.workdir={tmp_path / 'nothing'}"), tmp_path / "c",
          devices=jax.devices()[:1], progress=False)
  for bad in ("image_encoder", "a:b:c", ":image_encoder"):
    with pytest.raises(ValueError, match="source/path:target/path"):
      parse_mapping(bad)
  assert parse_mapping("image_encoder:vision/encoder/") == (("image_encoder",),
                                                            ("vision", "encoder"))


def test_named_sources_each_copy_their_subtrees_and_empty_ones_are_skipped(clip_run):
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec
  from mmjax.train import sharding
  from mmjax.train.warm_start import warm_start
  workdir, clip_result = clip_run
  clip_params = clip_result.state.params["image_encoder"]
  config = vqa_config()
  params = jax.tree.map(np.asarray, VQATask(config).init_params(jax.random.key(1)))
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), params)
  source = lambda run, *pairs: ml_collections.ConfigDict(dict(workdir=run, config="", step=-1,
                                                              params=pairs))
  init_from = ml_collections.ConfigDict(dict(
      positions=source(str(workdir), "image_encoder/pos_embed:image_encoder/pos_embed"),
      off=source("", "nothing:nothing"),
      blocks=source(str(workdir), "image_encoder/transformer:image_encoder/transformer")))
  new, lines = warm_start(params, init_from, mesh, shardings)
  # ConfigDict keeps its keys sorted: "blocks" before "positions".
  assert len(lines) == 2 and "transformer" in lines[0] and "pos_embed" in lines[1]
  _assert_trees_equal(new["image_encoder"]["transformer"], clip_params["transformer"])
  np.testing.assert_array_equal(new["image_encoder"]["pos_embed"],
                                np.asarray(nn_unbox(clip_params["pos_embed"])))
  # What no source names stays as initialised.
  _assert_trees_equal(new["question_encoder"], params["question_encoder"])
  bad = ml_collections.ConfigDict(dict(positions=init_from.positions, typo=dict(work="x")))
  with pytest.raises(ValueError, match="init_from.typo is neither a source"):
    warm_start(params, bad, mesh, shardings)


def test_extend_fills_the_leading_slice_of_a_grown_axis_and_keeps_the_rest(clip_run):
  """A vocabulary grown by new tokens: `extend` copies the source into the leading rows of the
  grown axis; the new rows keep this run's values. Without `extend`, or with a source larger
  than the target, the copy fails naming the leaf."""
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec
  from mmjax.train import sharding
  from mmjax.train.warm_start import warm_start
  workdir, clip_result = clip_run
  source = np.asarray(nn_unbox(clip_result.state.params["image_encoder"]["pos_embed"]))
  axis = source.ndim - 2                                   # the positions axis [.., T, D]
  grown_shape = list(source.shape)
  grown_shape[axis] += 3
  rng = np.random.default_rng(0)
  params = {"tower": {"pos_embed": rng.normal(size=grown_shape).astype(source.dtype),
                      "other": np.zeros(2, np.float32)}}
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), params)
  section = lambda **extra: ml_collections.ConfigDict(dict(
      workdir=str(workdir), config="", step=-1,
      params=("image_encoder/pos_embed:tower/pos_embed",), **extra))
  new, lines = warm_start(params, section(extend=("tower",)), mesh, shardings)
  expected = params["tower"]["pos_embed"].copy()
  expected[(slice(None),) * axis + (slice(0, source.shape[axis]),)] = source
  np.testing.assert_array_equal(np.asarray(new["tower"]["pos_embed"]), expected)
  np.testing.assert_array_equal(np.asarray(new["tower"]["other"]), params["tower"]["other"])
  assert f"({source.size:,} values)" in lines[0]
  with pytest.raises(ValueError, match="the subtrees differ"):
    warm_start(params, section(), mesh, shardings)
  shrunk = dict(params, tower=dict(params["tower"], pos_embed=expected[..., :-1]))
  with pytest.raises(ValueError, match="extend` grows one axis, smaller in the source"):
    warm_start(shrunk, section(extend=("tower",)), mesh, shardings)


def nn_unbox(x):
  return x.unbox() if hasattr(x, "unbox") else x


def test_warm_start_and_restore_do_not_import_the_trainer():
  """The trainer imports warm start, which restores the source run: `restore` is their shared
  module, so neither may import the trainer back (not even inside a function)."""
  for module in ("warm_start", "restore"):
    tree = ast.parse((ROOT / "mmjax" / "train" / f"{module}.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert "mmjax.train.trainer" not in imported, module
  assert trainer.restore_params is restore.restore_params  # cli.py and tests import it there
