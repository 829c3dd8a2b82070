"""KLAutoencoder, DiagonalGaussian and autoencoder_loss against naive numpy references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.autoencoder import (DiagonalGaussian, KLAutoencoder, autoencoder_loss,
                                  estimate_scaling_factor)

SMALL = dict(latent_channels=3, num_groups=4, num_heads=2)


def _images(batch=2, size=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1.0, maxval=1.0)


@pytest.fixture(scope="module")
def factor4():
  """A factor-4 autoencoder (3 levels) with random params moved off their zero init."""
  model = KLAutoencoder(channels=(4, 8, 8), scaling_factor=0.5, **SMALL)
  # Random params built in numpy from the abstract init (compiling `init` costs ~1 CPU minute).
  # Random, not the real init: ResBlock conv2 / transformer proj_out start at zero, which
  # zeroes the gradient of every layer before them; a generic point shows whether gradients
  # reach each parameter.
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), _images(),
                                     jax.random.key(1))["params"])
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if leaf.ndim >= 2:  # kernels: fan-in scaled
      return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    offset = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return offset + 0.1 * rng.normal(size=leaf.shape)

  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(draw(path, leaf), jnp.float32), abstract)
  return model, params


@pytest.mark.parametrize("channels,factor", [((4, 8), 2), ((4, 8, 8), 4)])
def test_shapes_for_downsample_factors(channels, factor):
  """Shapes by abstract evaluation (no compile); test_encode_decode_jit runs the real thing."""
  model = KLAutoencoder(channels=channels, **SMALL)
  assert model.downsample_factor == factor
  x = _images(batch=2, size=16)
  boxed = jax.eval_shape(model.init, jax.random.key(0), x, jax.random.key(1))["params"]
  recon, posterior = jax.eval_shape(model.apply, {"params": nn.unbox(boxed)}, x,
                                    jax.random.key(3))
  latent = (2, 16 // factor, 16 // factor, 3)
  assert recon.shape == x.shape and recon.dtype == jnp.float32
  assert posterior.mean.shape == latent and posterior.logvar.shape == latent
  kl = jax.eval_shape(DiagonalGaussian.kl, posterior)
  assert kl.shape == (2,)
  # Logical axis names on every parameter, as in unet.py.
  leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
  assert leaves and all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
  assert boxed["encoder"]["conv_in"]["kernel"].names == (None, None, "embed", None)


def test_kl_matches_naive_formula():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  logvar = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  expected = np.zeros(3)
  for b in range(3):
    for m, lv in zip(mean[b].ravel(), logvar[b].ravel()):
      expected[b] += 0.5 * (m * m + np.exp(lv) - 1.0 - lv)
  kl = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar)).kl()
  np.testing.assert_allclose(kl, expected, rtol=1e-5)
  # KL of the prior itself is zero; from_moments splits mean | logvar on channels.
  moments = jnp.concatenate([jnp.zeros((1, 2, 2, 4)), jnp.zeros((1, 2, 2, 4))], axis=-1)
  np.testing.assert_allclose(DiagonalGaussian.from_moments(moments).kl(), [0.0], atol=1e-7)


def test_reparameterised_sample_has_posterior_mean_and_variance():
  mean = jnp.array([[[[-1.0, 0.5, 2.0]]]])
  logvar = jnp.array([[[[0.0, -2.0, 1.0]]]])
  posterior = DiagonalGaussian(mean, logvar)
  samples = jax.vmap(posterior.sample)(jax.random.split(jax.random.key(0), 20000))
  samples = np.asarray(samples).reshape(20000, 3)
  np.testing.assert_allclose(samples.mean(0), mean.ravel(), atol=0.05)
  np.testing.assert_allclose(samples.var(0), np.exp(logvar.ravel()), rtol=0.05)
  np.testing.assert_array_equal(posterior.mode(), mean)
  assert not np.allclose(posterior.sample(jax.random.key(1)), posterior.sample(jax.random.key(2)))


def test_encode_decode_jit_and_scaling(factor4):
  model, params = factor4
  x = _images(batch=3)

  @jax.jit
  def run(variables, x):
    posterior = model.apply(variables, x, method=KLAutoencoder.encode)
    recon = model.apply(variables, posterior.mode(), method=KLAutoencoder.decode)
    full, _ = model.apply(variables, x)
    latents = model.apply(variables, x, method=KLAutoencoder.to_latents)
    back = model.apply(variables, latents, method=KLAutoencoder.from_latents)
    return posterior, recon, full, latents, back

  posterior, recon, full, latents, back = run({"params": params}, x)
  assert isinstance(posterior, DiagonalGaussian) and posterior.mean.shape == (3, 4, 4, 3)
  assert recon.shape == x.shape and np.isfinite(np.asarray(recon)).all()
  # __call__ without a key decodes the mode: same as encode -> decode.
  np.testing.assert_allclose(full, recon, atol=1e-5)
  # to_latents multiplies by scaling_factor; from_latents undoes it before decoding.
  np.testing.assert_allclose(latents, 0.5 * posterior.mean, atol=1e-5)
  np.testing.assert_allclose(back, recon, atol=1e-5)


def test_gradient_reaches_every_parameter(factor4):
  model, params = factor4
  x = _images(batch=2)

  def loss(p):
    recon, posterior = model.apply({"params": p}, x, jax.random.key(5))
    return autoencoder_loss(recon, x, posterior, kl_weight=1e-2)[0]

  grads = jax.jit(jax.grad(loss))(params)
  norms = {jax.tree_util.keystr(path): float(jnp.linalg.norm(g))
           for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  dead = [name for name, norm in norms.items() if not norm > 0]
  assert len(norms) > 40 and not dead, dead
  assert any("mid" in name and "attn" in name for name in norms)


def test_autoencoder_loss_matches_numpy():
  rng = np.random.default_rng(1)
  x, recon = (rng.uniform(-1, 1, size=(2, 4, 4, 3)).astype(np.float32) for _ in range(2))
  mean, logvar = (rng.normal(size=(2, 2, 2, 4)).astype(np.float32) for _ in range(2))
  posterior = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar))
  kl = np.mean(0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3)))
  for name, rec in (("l1", np.mean(np.abs(recon - x))), ("l2", np.mean((recon - x) ** 2))):
    loss, metrics = autoencoder_loss(jnp.asarray(recon), jnp.asarray(x), posterior, 0.3,
                                     reconstruction=name)
    np.testing.assert_allclose(loss, rec + 0.3 * kl / 48, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], np.mean((recon - x) ** 2), rtol=1e-5)
  with pytest.raises(ValueError, match="reconstruction must be one of"):
    autoencoder_loss(jnp.asarray(recon), jnp.asarray(x), posterior, 0.3, reconstruction="huber")


def test_scaling_factor_is_one_over_the_std_of_all_latent_elements():
  # Per-channel offsets and scales: the std is over every element (SD's recipe), not per
  # channel, and around the global mean.
  rng = np.random.default_rng(0)
  latents = 3.0 + rng.normal(size=(8, 4, 4, 4)) * np.array([1.0, 2.0, 5.0, 0.5]) + np.array(
      [0.0, 1.0, -2.0, 4.0])
  values = latents.ravel().tolist()
  mean = sum(values) / len(values)
  std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
  factor = estimate_scaling_factor(jnp.asarray(latents, jnp.float32))
  np.testing.assert_allclose(factor, 1.0 / std, rtol=1e-5)
  with pytest.raises(ValueError, match=r"latents must be \[B, h, w, c\]"):
    estimate_scaling_factor(jnp.ones((4, 4)))


def test_bad_inputs_fail_clearly(factor4):
  model, params = factor4
  variables = {"params": params}
  with pytest.raises(ValueError, match=r"18x16 must be divisible by the downsample factor 4"):
    model.apply(variables, jnp.zeros((1, 18, 16, 3)), method=KLAutoencoder.encode)
  with pytest.raises(ValueError, match=r"expects images \[B, H, W, 3\].*got shape \(1, 16, 16, 1\)"):
    model.apply(variables, jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match=r"expects latents \[B, h, w, 3\].*got shape \(1, 4, 4, 4\)"):
    model.apply(variables, jnp.zeros((1, 4, 4, 4)), method=KLAutoencoder.decode)
  with pytest.raises(ValueError, match=r"num_groups=4 must divide every level width.*\[6\]"):
    KLAutoencoder(channels=(4, 6), **SMALL).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
