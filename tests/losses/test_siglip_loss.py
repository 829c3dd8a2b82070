"""siglip_loss (plain and blockwise) against a numpy formula and optax sigmoid cross-entropy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import log_expit

from mmjax.losses import siglip_loss


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_siglip_loss(image_emb, text_emb, temperature, bias):
  """The definition in float64 numpy: -mean_i sum_j log sigmoid(z_ij (S_ij / t + b))."""
  logits = np.asarray(image_emb, np.float64) @ np.asarray(text_emb, np.float64).T
  logits = logits / temperature + bias
  signs = 2 * np.eye(len(logits)) - 1
  return -np.sum(log_expit(signs * logits)) / len(logits)


def optax_siglip_loss(image_emb, text_emb, temperature, bias):
  """Independent jnp reference (gradients by autodiff through optax)."""
  logits = image_emb @ text_emb.T / temperature + bias
  labels = jnp.eye(logits.shape[0], dtype=logits.dtype)
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels)) / logits.shape[0]


def assert_close(actual, expected, tol):
  expected = np.asarray(expected)
  scale = max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("n,block_size", [(1, 4), (7, 3), (1000, 384)])
def test_loss_and_gradients_match_optax(n, block_size):
  rng = np.random.default_rng(n)
  image, text = unit_rows(rng, n, 16), unit_rows(rng, n, 16)
  with jax.enable_x64(True):
    ref_fn = jax.jit(jax.value_and_grad(optax_siglip_loss, argnums=(0, 1, 2, 3)))
    for dtype, tol in ((jnp.float64, 1e-10), (jnp.float32, 1e-5)):
      args = tuple(jnp.asarray(a, dtype) for a in (image, text, 0.1, -3.0))
      ref_loss, ref_grads = ref_fn(*(jnp.asarray(a, jnp.float64) for a in args))
      assert_close(ref_loss, numpy_siglip_loss(*(np.asarray(a, np.float64) for a in args)), 1e-12)
      for bs in (None, block_size):
        fn = jax.jit(jax.value_and_grad(
            lambda u, v, t, b: siglip_loss(u, v, t, b, block_size=bs), argnums=(0, 1, 2, 3)))
        loss, grads = fn(*args)
        assert loss.dtype == dtype
        assert_close(loss, ref_loss, tol)
        for grad, ref in zip(grads, ref_grads):
          assert grad.dtype == dtype
          assert_close(grad, ref, tol)


@pytest.mark.parametrize("block_size", [None, 5])
def test_logits_up_to_100_do_not_overflow(block_size):
  rng = np.random.default_rng(1)
  image = unit_rows(rng, 13, 8)
  text = np.concatenate([image[:7] + 0.01 * rng.normal(size=(7, 8)), -image[7:]])
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  with jax.enable_x64(True):
    ref_grads = jax.jit(jax.grad(optax_siglip_loss, argnums=(0, 1, 2, 3)))(
        jnp.asarray(image), jnp.asarray(text), jnp.float64(0.01), jnp.float64(-10.0))
  fn = lambda u, v, t, b: siglip_loss(u, v, t, b, block_size=block_size)
  args = (jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32), jnp.float32(0.01),
          jnp.float32(-10.0))
  loss, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(*args)
  assert_close(loss, numpy_siglip_loss(image, text, 0.01, -10.0), 1e-5)
  for grad, ref in zip(grads, ref_grads):
    assert np.all(np.isfinite(grad))
    assert_close(grad, ref, 1e-4)


def test_jit_vmap_grad_compose_and_bf16():
  rng = np.random.default_rng(3)
  image = jnp.asarray(np.stack([unit_rows(rng, 9, 8) for _ in range(3)]), jnp.float32)
  text = jnp.asarray(np.stack([unit_rows(rng, 9, 8) for _ in range(3)]), jnp.float32)
  temperatures = jnp.asarray([0.05, 0.1, 0.5], jnp.float32)
  biases = jnp.asarray([-10.0, -2.71, 0.0], jnp.float32)
  blockwise = lambda u, v, t, b: siglip_loss(u, v, t, b, block_size=4)
  losses, grads = jax.jit(jax.vmap(jax.value_and_grad(blockwise, argnums=(0, 1, 2, 3))))(
      image, text, temperatures, biases)
  ref_fn = jax.jit(jax.value_and_grad(optax_siglip_loss, argnums=(0, 1, 2, 3)))
  for k in range(3):
    ref_loss, ref_grads = ref_fn(image[k], text[k], temperatures[k], biases[k])
    assert_close(losses[k], ref_loss, 1e-5)
    for grad, ref in zip(grads, ref_grads):
      assert_close(grad[k], ref, 1e-5)
  loss = jax.jit(blockwise)(image[0].astype(jnp.bfloat16), text[0].astype(jnp.bfloat16), 0.1, -2.0)
  assert loss.dtype == jnp.float32
  expected = numpy_siglip_loss(np.asarray(image[0].astype(jnp.bfloat16), np.float64),
                               np.asarray(text[0].astype(jnp.bfloat16), np.float64), 0.1, -2.0)
  assert_close(loss, expected, 1e-5)


def test_bad_input_raises():
  with pytest.raises(ValueError, match="scalar bias"):
    siglip_loss(np.zeros((4, 3)), np.zeros((4, 3)), 0.1, np.zeros(4))
  with pytest.raises(ValueError, match="same shape"):
    siglip_loss(np.zeros((4, 3)), np.zeros((4, 2)), 0.1, 0.0)
