"""`mmjax.nn.conv`: the "fast" conv and its gradients equal `lax.conv_general_dilated`'s.

References: a naive numpy loop transcription of a "SAME" conv (forward), and jax.grad through a
plain `lax.conv_general_dilated` + bias (gradients w.r.t. input, kernel and bias).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mmjax.nn import conv as conv_lib
from mmjax.nn.conv import Conv2D, conv2d
from mmjax.nn.unet import conv as unet_conv
from mmjax.train import sharding


def naive_same_conv(x, kernel, bias, stride):
  """Direct loops: out[b, i, j, o] = bias[o] + sum x_pad[b, i*s + u, j*s + v, c] k[u, v, c, o].

  "SAME": out size ceil(n / s), total padding max((out - 1) s + k - n, 0), the smaller half
  before (TensorFlow's convention, which XLA follows).
  """
  batch, height, width, _ = x.shape
  size, _, _, cout = kernel.shape
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + size - height, 0)
  pad_w = max((out_w - 1) * stride + size - width, 0)
  x_pad = np.zeros((batch, height + pad_h, width + pad_w, x.shape[3]))
  x_pad[:, pad_h // 2:pad_h // 2 + height, pad_w // 2:pad_w // 2 + width] = x
  out = np.zeros((batch, out_h, out_w, cout))
  for b in range(batch):
    for i in range(out_h):
      for j in range(out_w):
        for o in range(cout):
          patch = x_pad[b, i * stride:i * stride + size, j * stride:j * stride + size, :]
          out[b, i, j, o] = bias[o] + np.sum(patch * kernel[:, :, :, o])
  return out


def plain_conv(x, kernel, bias, stride):
  return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def _data(seed, shape, cin, cout, size, stride):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape[:3] + (cin,)).astype(np.float32)
  kernel = rng.standard_normal((size, size, cin, cout)).astype(np.float32) / size
  bias = rng.standard_normal((cout,)).astype(np.float32)
  out_shape = (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), cout)
  weights = rng.standard_normal(out_shape).astype(np.float32)
  return x, kernel, bias, weights


@pytest.mark.parametrize("implementation", ["xla", "fast"])
@pytest.mark.parametrize("size,stride", [(3, 1), (3, 2), (1, 2)])
def test_forward_matches_naive_loop(implementation, size, stride):
  x, kernel, bias, _ = _data(0, (2, 5, 4), 3, 2, size, stride)
  module = Conv2D(2, kernel_size=size, strides=stride, implementation=implementation)
  out = jax.jit(module.apply)({"params": {"kernel": kernel, "bias": bias}}, x)
  np.testing.assert_allclose(out, naive_same_conv(x, kernel, bias, stride), rtol=1e-5,
                             atol=1e-5)


# (kernel size, stride, (H, W), split the kernel gradient into a band per output row)
GRADIENT_CASES = [(1, 1, (7, 6), False), (1, 2, (7, 6), False), (1, 2, (8, 8), False),
                  (3, 1, (7, 6), False), (3, 1, (7, 6), True), (3, 1, (8, 8), True),
                  (3, 2, (7, 6), True), (3, 2, (8, 8), True), (3, 2, (8, 8), False),
                  (5, 2, (7, 6), True)]


@pytest.mark.parametrize("size,stride,spatial,many_bands", GRADIENT_CASES)
def test_fast_values_and_gradients_match_lax(size, stride, spatial, many_bands, monkeypatch):
  if many_bands:  # so the banded kernel gradient really sums several bands
    monkeypatch.setattr(conv_lib, "_KERNEL_GRAD_BAND_PIXELS", 1)
  x, kernel, bias, weights = _data(1, (2,) + spatial, 3, 5, size, stride)
  module = Conv2D(5, kernel_size=size, strides=stride, implementation="fast")

  def fast_loss(x_, kernel_, bias_):
    out = module.apply({"params": {"kernel": kernel_, "bias": bias_}}, x_)
    return jnp.sum(jnp.sin(out) * weights)

  def plain_loss(x_, kernel_, bias_):
    return jnp.sum(jnp.sin(plain_conv(x_, kernel_, bias_, stride)) * weights)

  value, grads = jax.jit(jax.value_and_grad(fast_loss, argnums=(0, 1, 2)))(x, kernel, bias)
  ref_value, ref_grads = jax.jit(jax.value_and_grad(plain_loss, argnums=(0, 1, 2)))(
      x, kernel, bias)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  for name, grad, ref in zip(("input", "kernel", "bias"), grads, ref_grads):
    np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-5, err_msg=f"d loss / d {name}")


def test_params_and_outputs_equal_nn_conv():
  x = np.random.default_rng(2).standard_normal((2, 6, 6, 3)).astype(np.float32)
  ours = Conv2D(4, kernel_size=3, strides=2, implementation="fast",
                bias_init=nn.initializers.normal(1.0))
  ref = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME",
                bias_init=nn.initializers.normal(1.0))
  key = jax.random.key(0, impl="unsafe_rbg")  # compiles far faster than threefry on CPU
  params = jax.jit(ours.init)(key, x)["params"]
  ref_params = jax.jit(ref.init)(key, x)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  np.testing.assert_allclose(jax.jit(ours.apply)({"params": params}, x),
                             jax.jit(ref.apply)({"params": params}, x), rtol=1e-5, atol=1e-5)


def test_unet_helper_keeps_logical_axes():
  x = np.zeros((1, 4, 4, 8), np.float32)
  layer = unet_conv(6, "c", dtype=jnp.float32, param_dtype=jnp.float32)
  boxed = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
  assert boxed["kernel"].names == (None, None, "embed", None)
  assert boxed["bias"].names == (None,)
  assert boxed["kernel"].value.shape == (3, 3, 8, 6)


def test_bf16_fast_gradients_close_to_float32(monkeypatch):
  monkeypatch.setattr(conv_lib, "_KERNEL_GRAD_BAND_PIXELS", 1)
  x, kernel, bias, weights = _data(3, (2, 8, 8), 4, 6, 3, 1)
  module = Conv2D(6, implementation="fast", dtype=jnp.bfloat16)
  rounded = [np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)) for a in (x, kernel)]

  def loss(x_, kernel_):
    out = module.apply({"params": {"kernel": kernel_, "bias": bias}}, x_)
    return jnp.sum(out.astype(jnp.float32) * weights)

  out = jax.eval_shape(module.apply, {"params": {"kernel": kernel, "bias": bias}}, x)
  assert out.dtype == jnp.bfloat16
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  ref_grads = jax.jit(jax.grad(lambda a, k: jnp.sum(plain_conv(a, k, bias, 1) * weights),
                               argnums=(0, 1)))(*rounded)
  for grad, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(grad, ref, atol=0.02 * np.abs(ref).max())


def test_fast_gradient_on_a_batch_sharded_input(monkeypatch):
  monkeypatch.setattr(conv_lib, "_KERNEL_GRAD_BAND_PIXELS", 1)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  x, kernel, bias, weights = _data(4, (8, 6, 6), 3, 4, 3, 1)
  loss = lambda impl: lambda x_, k_: jnp.sum(
      jnp.sin(conv2d(x_, k_, implementation=impl) + bias) * weights)
  batch = sharding.batch_sharding(mesh)
  grad_fast = jax.jit(jax.grad(loss("fast"), argnums=(0, 1)))(jax.device_put(x, batch), kernel)
  ref = jax.jit(jax.grad(loss("xla"), argnums=(0, 1)))(x, kernel)
  assert grad_fast[0].sharding.is_equivalent_to(batch, 4)
  for grad, expected in zip(grad_fast, ref):
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,x_shape,match", [
    (dict(kernel_size=2), (1, 4, 4, 3), "kernel_size must be odd"),
    (dict(strides=3), (1, 4, 4, 3), "strides must be 1 or 2"),
    (dict(implementation="cudnn"), (1, 4, 4, 3), "implementation must be one of"),
    (dict(), (4, 4, 3), r"NHWC \[B, H, W, C\]"),
])
def test_bad_configuration_raises(kwargs, x_shape, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(Conv2D(2, **kwargs).init, jax.random.key(0), np.zeros(x_shape, np.float32))
