"""`super_resolve` (one cascade stage on given low-res images) and `refine_coarse_to_fine`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import diffusion


def _copy_low_res(seen):
  """An x0-predicting stage that returns its conditioning image and records its keywords."""
  def denoise_fn(x, t, text, low_res, low_res_t):
    del x, t, text
    seen.update(low_res=low_res, low_res_t=low_res_t)
    return low_res
  return denoise_fn


def test_super_resolve_conditions_like_a_cascade_stage():
  schedule = diffusion.linear_schedule(num_train_steps=100)
  seen = {}
  stage = diffusion.CascadeStage(_copy_low_res(seen), schedule, (4, 4, 1), prediction="x0",
                                 sampler="ddim", num_steps=3)
  low = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
  cond = dict(text=jnp.ones((3, 5)))
  up = jax.image.resize(low, (3, 4, 4, 1), "bilinear")
  clean = diffusion.super_resolve(stage, jax.random.key(1), low, cond=cond)
  np.testing.assert_allclose(clean, up, rtol=1e-6)  # no augmentation: x0 = the upsampled input
  noisy_stage = stage.__class__(**{**stage.__dict__, "noise_aug_t": 0.4})
  noised = diffusion.super_resolve(noisy_stage, jax.random.key(1), low, cond=cond)
  np.testing.assert_allclose(seen["low_res_t"], 0.4)
  a, s = (float(v) for v in schedule.alpha_sigma(0.4))
  residual = (np.asarray(noised) - a * np.asarray(up)) / s
  assert 0.5 < residual.std() < 1.5 and abs(residual.mean()) < 0.5
  with pytest.raises(ValueError, match="super_resolve: upsampled conditioning has shape"):
    bad = stage.__class__(**{**stage.__dict__, "upsample": lambda x, shape: x})
    diffusion.super_resolve(bad, jax.random.key(1), low, cond=cond)


def test_refine_is_img2img_of_the_upsampled_coarse_images():
  schedule = diffusion.cosine_schedule(discrete=False)
  coarse = jax.random.uniform(jax.random.key(0), (2, 3, 3, 3), minval=-1, maxval=1)
  up = jax.image.resize(coarse, (2, 6, 6, 3), "bilinear")
  # An untrained eps model (predicts 0): x0 = x_t / alpha, so only the added noise remains.
  zero_eps = lambda x, t: jnp.zeros_like(x)

  @jax.jit
  def refine(strength):
    return diffusion.refine_coarse_to_fine(zero_eps, jax.random.key(1), coarse, schedule,
                                           shape=(6, 6, 3), strength=strength, num_steps=4,
                                           sampler="ddim")

  reference = diffusion.img2img(zero_eps, jax.random.key(1), up, schedule, strength=0.5,
                                num_steps=4, sampler="ddim")
  np.testing.assert_allclose(refine(jnp.float32(0.5)), reference, rtol=1e-5, atol=1e-6)
  weak = np.asarray(refine(jnp.float32(1e-4)))
  np.testing.assert_allclose(weak, up, atol=1e-2)
  assert np.abs(np.asarray(refine(jnp.float32(0.5))) - up).mean() > 0.1
  assert refine._cache_size() == 1  # strength is traced
  with pytest.raises(ValueError, match="upsampled coarse images have shape"):
    diffusion.refine_coarse_to_fine(zero_eps, jax.random.key(1), coarse, schedule,
                                    shape=(6, 6, 3), strength=0.5, num_steps=2,
                                    upsample=lambda x, shape: x)
