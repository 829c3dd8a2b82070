"""Guidance and x0 post-processing: classifier-free guidance, guidance rescale, thresholding."""
import jax
import jax.numpy as jnp

from mmjax.diffusion.parameterization import expand_to


def classifier_free_guidance(denoise_fn, scale, *, uncond: dict | None = None, rescale=0.0,
                             batched: bool = True):
  """Wraps a conditional denoiser into a guided one (Ho & Salimans 2022).

  guided = uncond_out + scale * (cond_out - uncond_out): scale 0 is the unconditional model,
  1 the conditional one. The output type (eps, x0 or v) is unchanged; since every conversion
  to x0 is affine in the output with the same coefficients for both calls, guiding in eps
  space equals guiding in x0 or v space.

  Args:
    denoise_fn: `(x_t [B, ...], t [B], **cond) -> output [B, ...]`.
    scale: scalar or [B] guidance scale; an array (traced under jit) never recompiles.
    uncond: keyword arrays for the unconditional call (e.g. the empty-prompt embedding),
      each broadcastable to the cond array of the same key ([L, D], [1, L, D] or
      [B, L, D]); cond keys missing from uncond (a low-resolution image, a mask) are shared
      by both calls. None: the unconditional call gets no keyword arguments.
    rescale: guidance rescale phi (Lin et al. 2023, eq. 15-16; 0.7 suggested): blends the
      guided output with a copy rescaled to the conditional output's per-example std.
      May be traced; the Python number 0 skips it.
    batched: with `uncond`, run both calls as one network call on a 2B batch.

  Returns:
    guided_fn with denoise_fn's signature.
  """
  def guided_fn(x_t, t, **cond):
    if uncond is None:
      cond_out = denoise_fn(x_t, t, **cond)
      uncond_out = denoise_fn(x_t, t)
    else:
      if not set(uncond) <= set(cond):
        raise ValueError(f"uncond keys {sorted(uncond)} must be a subset of the cond keys "
                         f"{sorted(cond)}")
      null = {k: _broadcast_like(uncond[k], cond[k], k) if k in uncond else cond[k]
              for k in cond}
      if batched:
        both = jax.tree_util.tree_map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null)
        out = denoise_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), **both)
        cond_out, uncond_out = jnp.split(out, 2, axis=0)
      else:
        cond_out = denoise_fn(x_t, t, **cond)
        uncond_out = denoise_fn(x_t, t, **null)
    dtype = jnp.result_type(cond_out.dtype, jnp.float32)
    cond_out, uncond_out = cond_out.astype(dtype), uncond_out.astype(dtype)
    w = expand_to(jnp.asarray(scale, dtype), cond_out)
    guided = uncond_out + w * (cond_out - uncond_out)
    if isinstance(rescale, (int, float)) and rescale == 0:
      return guided
    return rescale_guidance(guided, cond_out, rescale)

  return guided_fn


def rescale_guidance(guided, cond_out, rescale):
  """Lin et al. 2023 eq. 15-16: phi * guided * std(cond)/std(guided) + (1 - phi) * guided,
  std over all but the batch axis; guided, cond_out [B, ...], rescale scalar or [B]."""
  axes = tuple(range(1, guided.ndim))
  std_cond = jnp.std(cond_out, axis=axes, keepdims=True)
  std_guided = jnp.std(guided, axis=axes, keepdims=True)
  phi = expand_to(jnp.asarray(rescale, guided.dtype), guided)
  factor = phi * std_cond / jnp.maximum(std_guided, jnp.finfo(guided.dtype).tiny) + (1.0 - phi)
  return guided * factor


def dynamic_threshold(x0, percentile=0.995):
  """Imagen's dynamic thresholding of an x0 prediction [B, ...].

  Per example, s = the `percentile` quantile of |x0|, floored at 1; x0 is clipped to [-s, s]
  and divided by s, so saturated pixels are pushed inwards instead of clipped at +-1.
  """
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.result_type(x0.dtype, jnp.float32))
  s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
  s = expand_to(s, x0).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s


def dynamic_thresholding(percentile=0.995):
  """An `x0_transform` for `sample` applying `dynamic_threshold` at `percentile`."""
  if not 0.0 < float(percentile) <= 1.0:
    raise ValueError(f"percentile must be in (0, 1], got {percentile}")
  return lambda x0: dynamic_threshold(x0, percentile)


def static_thresholding(limit=1.0):
  """An `x0_transform` for `sample` clipping x0 to [-limit, limit] (DDPM's clip_denoised)."""
  return lambda x0: jnp.clip(x0, -limit, limit)


def _broadcast_like(null, like, name):
  null = jnp.asarray(null, like.dtype)
  try:
    return jnp.broadcast_to(null, like.shape)
  except ValueError:
    raise ValueError(f"uncond[{name!r}] of shape {null.shape} does not broadcast to cond's "
                     f"{like.shape}") from None
