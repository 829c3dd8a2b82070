"""The SigLIP options of the towers: `MAPHead` against a NumPy transcription; a ViT without
class token / ln_pre against its own parts applied by hand; the text tower's "last" pooling and
`padding_mask=False` against an unmasked call."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.text import TextTransformer
from mmjax.nn.transformer import Transformer
from mmjax.nn.vit import MAPHead, VisionTransformer

EPS = 1e-6


def random_params(params, seed=0, scale=0.5):
  """Every leaf replaced by N(0, scale^2) noise (LayerNorm scales around 1, biases nonzero)."""
  leaves, treedef = jax.tree.flatten(nn.unbox(params))
  rng = np.random.default_rng(seed)
  return treedef.unflatten([scale * rng.normal(size=l.shape).astype(np.float32) for l in leaves])


def np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_mlp(x, p):
  h = np_gelu_tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def np_map_head(tokens, p):
  """big_vision's MAPHead written out: [B, T, W] -> [B, W]."""
  attn = p["attn"]
  batch, width = tokens.shape[0], tokens.shape[-1]
  probe = np.broadcast_to(p["probe"], (batch, 1, width))
  q = np.einsum("bqd,dhk->bqhk", probe, attn["query"]["kernel"]) + attn["query"]["bias"]
  kv = np.einsum("btd,dshk->btshk", tokens, attn["kv"]["kernel"]) + attn["kv"]["bias"]
  k, v = kv[:, :, 0], kv[:, :, 1]
  logits = np.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum("bhqt,bthk->bqhk", weights, v)
  x = np.einsum("bqhk,hkd->bqd", heads, attn["out"]["kernel"]) + attn["out"]["bias"]
  x = x + np_mlp(np_layer_norm(x, p["ln"]), p["mlp"])
  return x[:, 0]


def test_map_head_matches_numpy():
  tokens = np.random.default_rng(1).normal(size=(3, 7, 16)).astype(np.float32)
  head = MAPHead(num_heads=4, mlp_dim=24)
  params = random_params(head.init(jax.random.key(0), tokens)["params"])
  assert params["probe"].shape == (1, 1, 16)
  assert params["attn"]["kv"]["kernel"].shape == (16, 2, 4, 4)
  out = head.apply({"params": params}, tokens)
  want = np_map_head(tokens.astype(np.float64), jax.tree.map(np.float64, params))
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-5)


VIT = dict(patch_size=4, width=16, num_layers=2, num_heads=2, mlp_ratio=1.5)
IMAGES = np.random.default_rng(2).normal(size=(2, 8, 12, 3)).astype(np.float32)


def test_vit_without_class_token_and_ln_pre_with_map_pooling():
  vit = VisionTransformer(**VIT, class_token=False, pre_norm=False, pool="map")
  params = random_params(vit.init(jax.random.key(0), IMAGES)["params"], seed=3)
  assert "cls_token" not in params and "ln_pre" not in params and "map_head" in params
  tokens, pooled = vit.apply({"params": params}, IMAGES)
  # By hand: "(p q c)" patches, the patch embedding with its bias, positions, no class token,
  # no LayerNorm; the blocks and ln_final; the MAP head over all tokens.
  patches = IMAGES.reshape(2, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 48)
  embedded = (patches @ params["patch_embed"]["kernel"] + params["patch_embed"]["bias"]
              + params["pos_embed"])
  transformer = Transformer(2, 2, 24)
  want_tokens = transformer.apply({"params": params["transformer"]}, jnp.asarray(embedded))
  np.testing.assert_allclose(np.asarray(tokens), np.asarray(want_tokens), atol=1e-5)
  want_pooled = np_map_head(np.asarray(want_tokens, np.float64),
                            jax.tree.map(np.float64, params["map_head"]))
  np.testing.assert_allclose(np.asarray(pooled), want_pooled, atol=1e-5)


def test_vit_gap_without_class_token_averages_every_token():
  vit = VisionTransformer(**VIT, class_token=False, pool="gap")
  params = vit.init(jax.random.key(0), IMAGES)["params"]
  assert "cls_token" not in params and "ln_pre" in params
  tokens, pooled = vit.apply({"params": params}, IMAGES)
  assert tokens.shape == (2, 6, 16)
  np.testing.assert_allclose(np.asarray(pooled), np.asarray(tokens).mean(1), atol=1e-6)


def test_vit_refuses_cls_pooling_without_class_token_and_unknown_pools():
  with pytest.raises(ValueError, match="pool='cls' needs class_token=True"):
    VisionTransformer(**VIT, class_token=False).init(jax.random.key(0), IMAGES)
  with pytest.raises(ValueError, match=r"pool must be one of \('cls', 'gap', 'map'\), got 'max'"):
    VisionTransformer(**VIT, pool="max").init(jax.random.key(0), IMAGES)


TEXT = dict(vocab_size=20, context_length=8, width=16, num_layers=2, num_heads=2, causal=False,
            pad_id=1, eos_id=1)
# SigLIP-style: ids, eos 1, padded with 1; the last row fills the length.
TOKENS = jnp.array([[5, 6, 7, 1, 1, 1, 1, 1], [9, 3, 1, 1, 1, 1, 1, 1],
                    [4, 8, 12, 13, 14, 15, 16, 17]], jnp.int32)


def test_text_unmasked_attention_and_last_pooling():
  siglip_like = TextTransformer(**TEXT, padding_mask=False, pool="last")
  variables = siglip_like.init(jax.random.key(0), TOKENS)
  variables = {"params": random_params(variables["params"], seed=4)}
  features, pooled = siglip_like.apply(variables, TOKENS)
  np.testing.assert_array_equal(np.asarray(pooled), np.asarray(features)[:, -1])
  # No padding mask == a masked tower whose pad id never occurs (nothing to hide).
  unmasked, _ = TextTransformer(**{**TEXT, "pad_id": 0}).apply(variables, TOKENS)
  np.testing.assert_allclose(np.asarray(features), np.asarray(unmasked), atol=1e-6)
  # ... and hiding the padding changes the real tokens' features (the mask is really off).
  masked, _ = TextTransformer(**TEXT).apply(variables, TOKENS)
  assert np.abs(np.asarray(masked)[:2, :3] - np.asarray(features)[:2, :3]).max() > 1e-2
  # The padded rows' last position is a pad token, which still carries the text (it attends).
  _, other = siglip_like.apply(variables, TOKENS.at[:, 0].set(19))
  assert np.abs(np.asarray(other) - np.asarray(pooled))[:2].max() > 1e-3


def test_text_refuses_unknown_pool():
  with pytest.raises(ValueError, match=r"pool must be one of \('eos', 'first', 'mean', 'last'\)"):
    TextTransformer(**TEXT, pool="max").init(jax.random.key(0), TOKENS)
