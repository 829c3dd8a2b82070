"""PerceiverResampler against a float64 numpy transcription of Flamingo's resampler; the
GatedCrossAttentionBlock's media mask against a hand-built one, its zero output (and finite
gradient) for text before the first image, and its identity at init."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn.gated_cross_attention import GatedCrossAttentionBlock, media_mask
from mmjax.nn.perceiver import PerceiverResampler

EPS = 1e-6
# Small programs on a shared CPU: skipping XLA's backend optimisations halves compile time.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_mlp(x, p):
  h = np_gelu_tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def np_cross_attention(q_in, kv_in, p, mask=None):
  """Bias-free multi-head attention; q_in [B, T, D], kv_in [B, S, Dkv], mask [B, T, S]."""
  q = np.einsum("btd,dhk->bthk", q_in, p["query"]["kernel"])
  kv = np.einsum("bsd,dihk->bsihk", kv_in, p["kv"]["kernel"])
  logits = np.einsum("bthk,bshk->bhts", q, kv[:, :, 0]) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask[:, None], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  heads = np.einsum("bhts,bshk->bthk", w, kv[:, :, 1])
  return np.einsum("bthk,hkd->btd", heads, p["out"]["kernel"])


def np_resampler(media, p, num_layers):
  """media [B, M, F, N, D] -> [B, M, R, D], written from the paper / open_flamingo."""
  b, m, f, n, d = media.shape
  x = (media + p["frame_embed"][:f, None]).reshape(b * m, f * n, d)
  latents = np.broadcast_to(p["latents"], (b * m,) + p["latents"].shape)
  for i in range(num_layers):
    lp = p[f"layer_{i}"]
    lat_n = np_layer_norm(latents, lp["ln_latents"])
    kv = np.concatenate([np_layer_norm(x, lp["ln_media"]), lat_n], axis=1)
    latents = latents + np_cross_attention(lat_n, kv, lp["attn"])
    latents = latents + np_mlp(np_layer_norm(latents, lp["ln_mlp"]), lp["mlp"])
  return np_layer_norm(latents, p["ln_final"]).reshape(b, m, -1, d)


def as_np(params):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(params))


def test_resampler_matches_numpy_transcription():
  module = PerceiverResampler(num_latents=3, num_layers=2, num_heads=2, max_frames=3,
                              mlp_ratio=2.0)
  media = jax.random.normal(jax.random.key(0), (2, 2, 2, 5, 8))
  params = nn.unbox(fast_jit(module.init)(jax.random.key(1), media)["params"])
  # Move LayerNorm / MLP biases and scales off their init so every term is exercised.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32), params)
  out = fast_jit(module.apply)({"params": params}, media)
  expected = np_resampler(np.asarray(media, np.float64), as_np(params), num_layers=2)
  assert out.shape == (2, 2, 3, 8)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


# "x <image> a red circle <eoc> <image> a blue square <eoc>" with one text token before the
# first image; I = <image>, E = <eoc>.
SEQUENCE = ["x", "I", "a", "red", "circle", "E", "I", "a", "blue", "square", "E"]


def test_media_mask_matches_hand_built_mask():
  locations = jnp.array([[w == "I" for w in SEQUENCE]])
  num_latents = 2
  mask = np.asarray(media_mask(locations, num_media=2, num_latents=num_latents))
  # The medium each token sees: none before the first <image>; the <image> token itself sees
  # its own image (open_flamingo's cumsum convention).
  sees = [None, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
  expected = np.zeros((1, 1, len(SEQUENCE), 2 * num_latents), bool)
  for t, medium in enumerate(sees):
    if medium is not None:
      expected[0, 0, t, medium * num_latents:(medium + 1) * num_latents] = True
  np.testing.assert_array_equal(mask, expected)


@functools.cache
def block_setup():
  """(block, its init params, x [1, L, 8], media [1, 2, 3, 6], media_locations [1, L])."""
  block = GatedCrossAttentionBlock(num_heads=2, mlp_dim=16)
  x = jax.random.normal(jax.random.key(0), (1, len(SEQUENCE), 8))
  media = jax.random.normal(jax.random.key(1), (1, 2, 3, 6))
  locations = jnp.array([[w == "I" for w in SEQUENCE]])
  params = nn.unbox(fast_jit(block.init)(jax.random.key(2), x, media, locations)["params"])
  return block, params, x, media, locations


def with_gates(params, alpha_attn, alpha_ffw):
  return {**params, "alpha_attn": jnp.float32(alpha_attn), "alpha_ffw": jnp.float32(alpha_ffw)}


def test_block_is_identity_at_init():
  block, params, x, media, locations = block_setup()
  np.testing.assert_array_equal(fast_jit(block.apply)({"params": params}, x, media, locations), x)


def test_block_cross_attention_matches_numpy_and_is_zero_before_first_image():
  block, params, x, media, locations = block_setup()
  params = with_gates(params, 0.7, 0.0)
  out = np.asarray(fast_jit(block.apply)({"params": params}, x, media, locations))
  p = as_np(params)
  x64, media64 = np.asarray(x, np.float64), np.asarray(media, np.float64)
  sees = np.array([-1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
  key_medium = np.repeat(np.arange(2), 3)
  mask = (sees[:, None] == key_medium[None])[None]
  # Rows that see nothing: the numpy reference attends to everything, then drops the result.
  safe_mask = mask | ~mask.any(-1, keepdims=True)
  attended = np_cross_attention(np_layer_norm(x64, p["ln_cross"]), media64.reshape(1, 6, 6),
                                p["cross_attn"], safe_mask)
  attended = attended * mask.any(-1)[..., None]
  expected = x64 + np.tanh(0.7) * attended
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[:, 0], np.asarray(x)[:, 0])  # exactly zero update


def test_no_nan_in_forward_or_gradient_for_text_before_first_image():
  block, params, x, media, locations = block_setup()
  params = with_gates(params, 0.5, 0.5)
  for implementation in ("einsum", "xla"):
    module = block.clone(attention_impl=implementation)
    loss = lambda p, x: (module.apply({"params": p}, x, media, locations) ** 2).sum()
    value, (grad_p, grad_x) = fast_jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves((grad_p, grad_x)))
    # Token 0 sees no image: only the FFW path (and its own residual) reach it.
    apply = fast_jit(module.apply)
    ffw_only = apply({"params": {**params, "alpha_attn": jnp.float32(0.0)}}, x, media, locations)
    np.testing.assert_array_equal(apply({"params": params}, x, media, locations)[:, 0],
                                  ffw_only[:, 0])
