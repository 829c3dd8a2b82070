"""Mesh construction, logical sharding, and 1-device == n-device losses, params and optimizer
state sharding; the 8-device test setup itself."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmjax.train import sharding
from mmjax.train.logging import read_jsonl
from mmjax.train.tasks.contrastive import ContrastiveTask
from mmjax.train.trainer import train

from conftest import ROOT, assert_params_close, flat_params, tiny_config


def test_mesh_shape_resolves_minus_one():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="has 4 devices but 8"):
    sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.mesh_shape({"model": 2}, 8)


def test_xla_flags_force_eight_devices_or_fail():
  spec = importlib.util.spec_from_file_location("tests_root_conftest",
                                                ROOT / "tests" / "conftest.py")
  root_conftest = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(root_conftest)
  with_count = root_conftest.xla_flags_with_device_count
  assert with_count("") == "--xla_force_host_platform_device_count=8"
  assert with_count("--xla_dump_to=/tmp/x") == (
      "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8")
  kept = "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x"
  assert with_count(kept) == kept
  with pytest.raises(ValueError, match=r"device_count=4, but the tests need 8 host devices"):
    with_count("--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4")
  assert jax.device_count() == 8


def test_indivisible_dimensions_are_replicated():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  spec = sharding._divisible_spec(P("fsdp", "tensor"), (6, 10), mesh)
  assert spec == P("fsdp", None)


def _losses(workdir):
  return np.array([r["loss"] for r in read_jsonl(workdir / "train.jsonl")])


def _train_without_eval(config, workdir, **kw):
  """`train` with evaluation and end-of-run plots skipped: these tests compare training only,
  and each skipped eval saves compiling the embedding functions for one more mesh."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(ContrastiveTask, "evaluate", lambda self, params, mesh: {})
    patch.setattr(ContrastiveTask, "write_artifacts", lambda self, params, mesh, workdir: [])
    return train(config, workdir, progress=False, **kw)


def _is_adam(x):
  return isinstance(x, optax.ScaleByAdamState)


def _adam_states(opt_state):
  """The optax ScaleByAdamState(s) (count, mu, nu) inside a chained optimizer state."""
  return [x for x in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(x)]


# Six Adam steps at lr 0.01 from the same init: another mesh's reduction order moves params by
# float32 rounding only, far below the ~1e-2 per-step updates a wrong batch or gradient changes.
PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-6


def test_mesh_shapes_give_the_same_losses_and_params(tmp_path):
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 CPU devices"
  one = _train_without_eval(tiny_config("mesh.data=1"), tmp_path / "one", devices=jax.devices()[:1])
  expected, expected_params = _losses(tmp_path / "one"), flat_params(one.state.params)
  assert len(expected) == 6 and np.all(np.isfinite(expected))
  assert expected[-1] < expected[0]
  for data, fsdp, tensor in ((8, 1, 1), (4, 2, 1), (2, 2, 2)):
    mesh_name = f"mesh ({data},{fsdp},{tensor})"
    workdir = tmp_path / f"mesh_{data}{fsdp}{tensor}"
    result = _train_without_eval(
        tiny_config(f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"), workdir)
    np.testing.assert_allclose(_losses(workdir), expected, rtol=1e-4, err_msg=mesh_name)
    assert_params_close(flat_params(result.state.params), expected_params, mesh_name,
                        rtol=PARAM_RTOL, atol=PARAM_ATOL)
    if fsdp * tensor > 1:
      # Parameters really are split: a weight matrix is sharded over fsdp and/or tensor.
      fc1 = result.state.params["image_encoder"]["transformer"]["block_0"]["mlp"]["fc1"]["kernel"]
      assert tuple(fc1.sharding.spec) == ("fsdp", "tensor")
      shard = fc1.addressable_shards[0].data
      assert shard.shape == (fc1.shape[0] // fsdp, fc1.shape[1] // tensor)
    # Each Adam moment is sharded exactly like its parameter.
    adam_states = _adam_states(result.state.opt_state)
    assert len(adam_states) == 1, result.state.opt_state
    for moment in ("mu", "nu"):
      tree = getattr(adam_states[0], moment)
      assert jax.tree.structure(tree) == jax.tree.structure(result.state.params)
      for (path, m), p in zip(jax.tree_util.tree_leaves_with_path(tree),
                              jax.tree.leaves(result.state.params)):
        assert m.sharding == p.sharding, (f"{mesh_name} {moment}{jax.tree_util.keystr(path)}: "
                                          f"{m.sharding.spec} vs param {p.sharding.spec}")


LOSS_TEST_STEPS = ("total_steps=3", "mesh.data=8")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """The plain-loss 8-device run every loss option is compared with (trained once)."""
  workdir = tmp_path_factory.mktemp("plain")
  return workdir, _train_without_eval(tiny_config(*LOSS_TEST_STEPS), workdir)


@pytest.mark.parametrize("options", [
    ("loss.block_size=5",),                       # blockwise, ragged last block
    ("loss.sharded=True", "loss.block_size=3"),   # ring over the 8 batch devices
    ("grad_cache_chunks=4",),                     # GradCache
    ("grad_cache_chunks=2", "loss.sharded=True"),
])
def test_loss_options_match_the_plain_loss(tmp_path, plain_run, options):
  plain_dir, plain = plain_run
  other = _train_without_eval(tiny_config(*LOSS_TEST_STEPS, *options), tmp_path / "other")
  np.testing.assert_allclose(_losses(tmp_path / "other"), _losses(plain_dir), rtol=2e-5)
  for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(other.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_siglip_sharded_matches_plain(tmp_path):
  steps = ("total_steps=3", "mesh.data=8", "loss.kind=siglip", "model.logit_bias_init=-10.0",
           "model.logit_scale_init=2.302585")
  _train_without_eval(tiny_config(*steps), tmp_path / "plain")
  _train_without_eval(tiny_config(*steps, "loss.sharded=True"), tmp_path / "ring")
  np.testing.assert_allclose(_losses(tmp_path / "ring"), _losses(tmp_path / "plain"), rtol=2e-5)
