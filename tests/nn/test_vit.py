"""VisionTransformer patchify and conv stems."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.vit import ConvStem, VisionTransformer


def _naive_conv3x3_stride2_same(x, kernel, bias):
  """x [B, H, W, C], kernel [3, 3, C, F] -> [B, ceil(H/2), ceil(W/2), F]; SAME padding."""
  b, h, w, _ = x.shape
  oh, ow = -(-h // 2), -(-w // 2)
  ph, pw = 2 * (oh - 1) + 3 - h, 2 * (ow - 1) + 3 - w
  padded = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  out = np.zeros((b, oh, ow, kernel.shape[-1]))
  for i in range(oh):
    for j in range(ow):
      patch = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
      out[:, i, j] = np.einsum("bhwc,hwcf->bf", patch, kernel) + bias
  return out


@pytest.mark.parametrize("size", [8, 7])
def test_conv_stem_matches_naive_convolution(size):
  x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
  stem = ConvStem((5,))
  params = stem.init(jax.random.PRNGKey(0), x)["params"]
  kernel = np.asarray(params["conv0"]["kernel"].unbox())
  bias = np.random.default_rng(1).normal(size=5).astype(np.float32)
  params = jax.tree.map(lambda v: v, params)
  params["conv0"]["bias"] = params["conv0"]["bias"].replace_boxed(jnp.asarray(bias))
  out = stem.apply({"params": params}, x)
  expected = np.maximum(_naive_conv3x3_stride2_same(x.astype(np.float64), kernel, bias), 0)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  # And the same as XLA's own convolution (flax nn.Conv, SAME, stride 2).
  conv = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  np.testing.assert_allclose(np.asarray(out), np.maximum(np.asarray(conv), 0), atol=1e-5)


def test_vit_with_stem_token_count_and_grads():
  vit = VisionTransformer(patch_size=2, width=16, num_layers=1, num_heads=2,
                          stem_channels=(4, 8), pool="gap")
  images = jnp.ones((3, 32, 32, 3))
  params = vit.init(jax.random.PRNGKey(0), images)["params"]
  tokens, pooled = vit.apply({"params": params}, images)
  assert tokens.shape == (3, 1 + (32 // 8) ** 2, 16) and pooled.shape == (3, 16)
  grads = jax.grad(lambda p: vit.apply({"params": p}, images)[1].sum())(params)
  assert float(jnp.abs(grads["stem"]["conv0"]["kernel"].unbox()).sum()) > 0


def test_vit_rejects_image_not_divisible_by_stem_and_patch():
  vit = VisionTransformer(patch_size=4, width=16, num_layers=1, num_heads=2, stem_channels=(4,))
  with pytest.raises(ValueError, match="not divisible by patch_size=4 times the conv stem"):
    vit.init(jax.random.PRNGKey(0), jnp.ones((1, 12, 12, 3)))
