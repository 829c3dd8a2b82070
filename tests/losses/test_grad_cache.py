"""GradCache gives the same loss and parameter gradients as differentiating directly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.losses import clip_loss, grad_cached_value_and_grad, siglip_loss


def init_params(rng, dim_in=6, dim_hidden=12, dim_out=5):
  keys = jax.random.split(rng, 4)
  return {
      "image": {"w1": jax.random.normal(keys[0], (dim_in, dim_hidden)) / 2,
                "w2": jax.random.normal(keys[1], (dim_hidden, dim_out)) / 3},
      "text": {"w1": jax.random.normal(keys[2], (dim_in, dim_hidden)) / 2,
               "w2": jax.random.normal(keys[3], (dim_hidden, dim_out)) / 3},
      "logit_scale": jnp.float32(np.log(10.0)),
      "logit_bias": jnp.float32(-2.0),
  }


def tower(weights, x, rng):
  hidden = jnp.tanh(x @ weights["w1"])
  # Dropout-like noise: GradCache must replay it identically in its second pass.
  hidden = hidden * jax.random.bernoulli(rng, 0.8, hidden.shape) / 0.8
  emb = hidden @ weights["w2"]
  return emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)


def embed_fn(params, chunk, rng):
  image_rng, text_rng = jax.random.split(rng)
  return (tower(params["image"], chunk["image"], image_rng),
          tower(params["text"], chunk["text"], text_rng))


def clip_loss_fn(embeddings, params):
  image_emb, text_emb = embeddings
  return clip_loss(image_emb, text_emb, 1 / jnp.exp(params["logit_scale"]), block_size=7)


def siglip_loss_fn(embeddings, params):
  image_emb, text_emb = embeddings
  loss = siglip_loss(image_emb, text_emb, 1 / jnp.exp(params["logit_scale"]),
                     params["logit_bias"])
  return loss, {"loss": loss}


def direct_loss(params, batch, num_chunks, rng, loss_fn):
  """The same objective without GradCache: embed chunk by chunk (same rngs), differentiate."""
  chunks = jax.tree.map(lambda x: np.split(x, num_chunks), batch)
  outs = [embed_fn(params, {k: chunks[k][c] for k in batch}, jax.random.fold_in(rng, c))
          for c in range(num_chunks)]
  embeddings = tuple(jnp.concatenate([o[i] for o in outs]) for i in range(2))
  return loss_fn(embeddings, params)


@pytest.mark.parametrize("loss_fn,has_aux", [(clip_loss_fn, False), (siglip_loss_fn, True)])
def test_matches_direct_gradients(loss_fn, has_aux):
  rng = jax.random.PRNGKey(0)
  params = init_params(rng)
  data = np.random.default_rng(0).normal(size=(2, 24, 6)).astype(np.float32)
  batch = {"image": data[0], "text": data[1]}
  num_chunks = 4
  value, grads = jax.jit(
      lambda p, b, r: grad_cached_value_and_grad(embed_fn, loss_fn, p, b, num_chunks, r,
                                                 has_aux=has_aux))(params, batch, rng)
  ref_value, ref_grads = jax.value_and_grad(direct_loss, has_aux=has_aux)(
      params, batch, num_chunks, rng, loss_fn)
  loss, ref_loss = (value[0], ref_value[0]) if has_aux else (value, ref_value)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
  if has_aux:
    np.testing.assert_allclose(value[1]["loss"], ref_loss, rtol=1e-5)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    ref = dict(jax.tree_util.tree_leaves_with_path(ref_grads))[path]
    if loss_fn is siglip_loss_fn or "logit_bias" not in str(path):  # CLIP has no bias
      assert np.max(np.abs(ref)) > 1e-4, path  # every parameter, logit scale included, matters
    np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-5 * np.max(np.abs(ref)),
                               err_msg=str(path))


def test_bad_chunking_raises():
  params = init_params(jax.random.PRNGKey(0))
  batch = {"image": np.zeros((10, 6), np.float32), "text": np.zeros((10, 6), np.float32)}
  with pytest.raises(ValueError, match="dividing the batch size 10"):
    grad_cached_value_and_grad(embed_fn, clip_loss_fn, params, batch, 3, jax.random.PRNGKey(0))
  batch["text"] = np.zeros((9, 6), np.float32)
  with pytest.raises(ValueError, match="same leading"):
    grad_cached_value_and_grad(embed_fn, clip_loss_fn, params, batch, 2, jax.random.PRNGKey(0))
