"""clip_loss (plain and blockwise) against a numpy formula and optax cross-entropy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import logsumexp

from mmjax.losses import clip_loss


def unit_rows(rng, n, d, dtype=np.float64):
  x = rng.normal(size=(n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def numpy_clip_loss(image_emb, text_emb, temperature):
  """The definition, in float64 numpy: mean of row-wise and column-wise cross-entropy."""
  logits = np.asarray(image_emb, np.float64) @ np.asarray(text_emb, np.float64).T / temperature
  diag = np.diag(logits)
  return (np.mean(logsumexp(logits, axis=1) - diag) + np.mean(logsumexp(logits, axis=0) - diag)) / 2


def optax_clip_loss(image_emb, text_emb, temperature):
  """An independent jnp reference whose gradients come from autodiff through optax."""
  logits = image_emb @ text_emb.T / temperature
  labels = jnp.arange(logits.shape[0])
  rows = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  cols = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return (jnp.mean(rows) + jnp.mean(cols)) / 2


def assert_close(actual, expected, tol):
  expected = np.asarray(expected)
  scale = max(1.0, float(np.max(np.abs(expected))))
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("n,block_size", [(1, 4), (7, 3), (1000, 384)])
def test_loss_and_gradients_match_optax(n, block_size):
  rng = np.random.default_rng(n)
  image, text, temperature = unit_rows(rng, n, 16), unit_rows(rng, n, 16), 0.05
  with jax.enable_x64(True):
    ref_fn = jax.jit(jax.value_and_grad(optax_clip_loss, argnums=(0, 1, 2)))
    for dtype, tol in ((jnp.float64, 1e-10), (jnp.float32, 1e-5)):
      # The reference sees exactly the (rounded) inputs the tested function sees.
      u, v, t = (jnp.asarray(a, dtype) for a in (image, text, temperature))
      ref_loss, ref_grads = ref_fn(*(jnp.asarray(a, jnp.float64) for a in (u, v, t)))
      assert_close(ref_loss, numpy_clip_loss(u, v, float(t)), 1e-12)
      for bs in (None, block_size):
        fn = jax.jit(jax.value_and_grad(
            lambda u, v, t: clip_loss(u, v, t, block_size=bs), argnums=(0, 1, 2)))
        loss, grads = fn(u, v, t)
        assert loss.dtype == dtype
        assert_close(loss, ref_loss, tol)
        for grad, ref in zip(grads, ref_grads):
          assert grad.dtype == dtype
          assert_close(grad, ref, tol)


@pytest.mark.parametrize("block_size", [None, 5])
def test_logits_up_to_100_do_not_overflow(block_size):
  rng = np.random.default_rng(1)
  image = unit_rows(rng, 13, 8)
  # Half the pairs aligned (logit ~ +100), the rest anti-aligned: logits span [-100, 100].
  text = np.concatenate([image[:7] + 0.01 * rng.normal(size=(7, 8)), -image[7:]])
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  with jax.enable_x64(True):
    ref_grads = jax.jit(jax.grad(optax_clip_loss, argnums=(0, 1, 2)))(
        jnp.asarray(image), jnp.asarray(text), jnp.float64(0.01))
  fn = lambda u, v, t: clip_loss(u, v, t, block_size=block_size)
  u, v = jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32)
  loss, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(u, v, jnp.float32(0.01))
  assert_close(loss, numpy_clip_loss(image, text, 0.01), 1e-5)
  for grad, ref in zip(grads, ref_grads):
    assert np.all(np.isfinite(grad))
    assert_close(grad, ref, 1e-4)


def test_bf16_inputs_accumulate_in_float32():
  rng = np.random.default_rng(2)
  image = jnp.asarray(unit_rows(rng, 50, 32), jnp.bfloat16)
  text = jnp.asarray(unit_rows(rng, 50, 32), jnp.bfloat16)
  expected = numpy_clip_loss(np.asarray(image, np.float64), np.asarray(text, np.float64), 0.07)
  for bs in (None, 16):
    fn = lambda u, v: clip_loss(u, v, 0.07, block_size=bs)
    loss, (grad_u, grad_v) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(image, text)
    assert loss.dtype == jnp.float32 and grad_u.dtype == jnp.bfloat16
    assert_close(loss, expected, 1e-5)


def test_jit_vmap_grad_compose():
  rng = np.random.default_rng(3)
  image = jnp.asarray(np.stack([unit_rows(rng, 9, 8) for _ in range(3)]), jnp.float32)
  text = jnp.asarray(np.stack([unit_rows(rng, 9, 8) for _ in range(3)]), jnp.float32)
  temperatures = jnp.asarray([0.05, 0.1, 0.5], jnp.float32)
  blockwise = lambda u, v, t: clip_loss(u, v, t, block_size=4)
  grad_fn = jax.jit(jax.vmap(jax.grad(blockwise, argnums=(0, 1, 2))))
  losses = jax.jit(jax.vmap(blockwise))(image, text, temperatures)
  grads = grad_fn(image, text, temperatures)
  ref_fn = jax.jit(jax.value_and_grad(optax_clip_loss, argnums=(0, 1, 2)))
  for k in range(3):
    ref_loss, ref_grads = ref_fn(image[k], text[k], temperatures[k])
    assert_close(losses[k], ref_loss, 1e-5)
    for grad, ref in zip(grads, ref_grads):
      assert_close(grad[k], ref, 1e-5)
  # Second order through the plain version still works (the blockwise one is first order).
  hess = jax.jit(jax.hessian(lambda t: clip_loss(image[0], text[0], t)))(jnp.float32(0.1))
  assert np.isfinite(hess)


def test_temperature_from_learnable_logit_scale():
  rng = np.random.default_rng(4)
  image, text = unit_rows(rng, 6, 4), unit_rows(rng, 6, 4)

  def loss_from_scale(logit_scale, bs):
    return clip_loss(jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32),
                     1 / jnp.exp(logit_scale), block_size=bs)

  grads = [jax.jit(jax.grad(loss_from_scale), static_argnums=1)(jnp.float32(2.0), bs)
           for bs in (None, 4)]
  eps = 1e-4
  with jax.enable_x64(True):
    numeric = (numpy_clip_loss(image, text, np.exp(-(2.0 + eps)))
               - numpy_clip_loss(image, text, np.exp(-(2.0 - eps)))) / (2 * eps)
  for grad in grads:
    assert_close(grad, numeric, 1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_emb=np.zeros((4, 3)), text_emb=np.zeros((5, 3))), "same shape"),
    (dict(image_emb=np.zeros((4,)), text_emb=np.zeros((4,))), r"\[N, D\]"),
    (dict(temperature=np.ones(2)), "scalar temperature"),
    (dict(block_size=0), "block_size"),
])
def test_bad_input_raises(kwargs, match):
  args = dict(image_emb=np.zeros((4, 3)), text_emb=np.zeros((4, 3)), temperature=0.1)
  block_size = kwargs.pop("block_size", None)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    clip_loss(args["image_emb"], args["text_emb"], args["temperature"], block_size=block_size)
