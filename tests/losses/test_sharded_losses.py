"""Ring losses inside shard_map equal the single-device formula, for 1..8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from mmjax.losses import clip_loss_sharded, siglip_loss_sharded

SHARD = 5  # rows per device; block_size 2 leaves a ragged last block


def reference_clip(image_emb, text_emb, temperature, bias):
  del bias
  logits = image_emb @ text_emb.T / temperature
  labels = jnp.arange(logits.shape[0])
  return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
          + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.T, labels))) / 2


def reference_siglip(image_emb, text_emb, temperature, bias):
  logits = image_emb @ text_emb.T / temperature + bias
  labels = jnp.eye(logits.shape[0], dtype=logits.dtype)
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels)) / logits.shape[0]


def sharded(kind, mesh, axis_name, block_size, check_vma=True):
  batch = P(axis_name)
  if kind == "clip":
    local = lambda u, v, t, b: clip_loss_sharded(u, v, t, axis_name=axis_name,
                                                 block_size=block_size)
  else:
    local = lambda u, v, t, b: siglip_loss_sharded(u, v, t, b, axis_name=axis_name,
                                                   block_size=block_size)
  return jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, P(), P()), out_specs=P(),
                       check_vma=check_vma)


def check_against_reference(kind, mesh, axis_name, block_size, check_vma=True):
  n = SHARD * mesh.size
  rng = np.random.default_rng(mesh.size)
  image, text = rng.normal(size=(2, n, 8))
  image /= np.linalg.norm(image, axis=1, keepdims=True)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  reference = reference_clip if kind == "clip" else reference_siglip
  with jax.enable_x64(True):
    args = (jnp.asarray(image), jnp.asarray(text), jnp.float64(0.05), jnp.float64(-2.0))
    value_and_grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
    loss, grads = value_and_grad(sharded(kind, mesh, axis_name, block_size, check_vma))(*args)
    ref_loss, ref_grads = value_and_grad(reference)(*args)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10, atol=1e-10)
    for name, grad, ref in zip(("image", "text", "temperature", "bias"), grads, ref_grads):
      scale = max(1.0, float(np.max(np.abs(ref))))
      np.testing.assert_allclose(grad, ref, rtol=1e-10, atol=1e-10 * scale, err_msg=name)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("num_devices", [1, 2, 3, 4, 8])
def test_ring_matches_single_device(kind, num_devices):
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  check_against_reference(kind, mesh, "data", block_size=2)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_one_tile_per_step(kind):
  mesh = Mesh(np.array(jax.devices()[:3]), ("data",))
  check_against_reference(kind, mesh, "data", block_size=None)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("check_vma", [True, False])
def test_batch_over_two_mesh_axes(kind, check_vma):
  mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "fsdp"))
  check_against_reference(kind, mesh, ("data", "fsdp"), block_size=3, check_vma=check_vma)


def test_per_device_memory_is_o_of_shard_not_batch():
  """Compiled loss+grad temp memory per device stays a few [b, D] shards, far below the
  [b, N] logits (or the N x D gathered shards) that autodiff through a ring would keep."""
  num_devices, shard, dim, block = 8, 256, 16, 32
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  image = jnp.ones((shard * num_devices, dim), jnp.float32)
  for kind in ("clip", "siglip"):
    grad_fn = jax.jit(jax.grad(sharded(kind, mesh, "data", block), argnums=(0, 1)))
    memory = grad_fn.lower(image, image, 0.1, -2.0).compile().memory_analysis()
    shard_bytes = shard * dim * 4
    assert memory.temp_size_in_bytes < 16 * shard_bytes, (kind, memory.temp_size_in_bytes)
