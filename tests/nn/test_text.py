"""TextTransformer: padding, pooling, and the image-grounded (cross-attention) variant."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn.text import TextTransformer

KW = dict(vocab_size=20, context_length=8, width=16, num_layers=2, num_heads=2)
TOKENS = jnp.array([[1, 5, 6, 7, 2, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0]], jnp.int32)


def _context(seed=0, length=5):
  return jax.random.normal(jax.random.key(seed), (2, length, 12))


def test_bidirectional_encoder_ignores_padding_tokens():
  model = TextTransformer(**KW, causal=False, pool="mean")
  params = model.init(jax.random.key(0), TOKENS)
  feats, pooled = model.apply(params, TOKENS)
  # Dropping three trailing padding tokens (keys every query would see if padding were not
  # masked) leaves the valid tokens' features unchanged.
  feats2, pooled2 = model.apply(params, TOKENS[:, :5])
  valid = (TOKENS != 0)[..., None]
  np.testing.assert_allclose(feats[:, :5] * valid[:, :5], feats2 * valid[:, :5], atol=1e-5)
  np.testing.assert_allclose(pooled, pooled2, atol=1e-5)
  np.testing.assert_allclose(pooled, (feats * valid).sum(1) / valid.sum(1), atol=1e-5)


def test_image_grounded_encoder_reads_only_valid_context():
  model = TextTransformer(**KW, causal=False, pool="first", cross_attention=True)
  context = _context()
  params = model.init(jax.random.key(0), TOKENS, context)
  block = params["params"]["transformer"]["block_0"]
  assert "cross_attn" in block and block["cross_attn"]["query"]["kernel"].value.shape[0] == 16
  feats, pooled = model.apply(params, TOKENS, context)
  assert feats.shape == (2, 8, 16) and pooled.shape == (2, 16)
  # The output depends on the image tokens ...
  _, other = model.apply(params, TOKENS, _context(seed=1))
  assert not np.allclose(pooled, other, atol=1e-4)
  # ... but not on those marked invalid, and masking a token equals dropping it.
  valid = jnp.array([[True] * 3 + [False] * 2] * 2)
  changed = context.at[:, 3:].set(100.0)
  _, masked = model.apply(params, TOKENS, context, valid)
  _, masked_changed = model.apply(params, TOKENS, changed, valid)
  _, dropped = model.apply(params, TOKENS, context[:, :3])
  np.testing.assert_allclose(masked, masked_changed, atol=1e-5)
  np.testing.assert_allclose(masked, dropped, atol=1e-5)


def test_cross_attention_needs_context_and_plain_encoder_refuses_it():
  grounded = TextTransformer(**KW, cross_attention=True)
  with pytest.raises(ValueError, match="context is missing"):
    grounded.init(jax.random.key(0), TOKENS)
  plain = TextTransformer(**KW)
  with pytest.raises(ValueError, match="context is given"):
    plain.init(jax.random.key(0), TOKENS, _context())
  with pytest.raises(ValueError, match=r"context must be \[B=2, S, D\]"):
    grounded.init(jax.random.key(0), TOKENS, _context()[:1])


def test_optional_context_skips_cross_attention_and_decoder_mode_needs_its_attention():
  """Without context, a `context_optional` grounded encoder is the plain encoder on the same
  parameters minus the cross-attention."""
  grounded = TextTransformer(**KW, causal=False, pool="mean", cross_attention=True,
                             context_optional=True)
  params = grounded.init(jax.random.key(0), TOKENS, _context())["params"]
  plain_params = jax.tree.map(lambda x: x, params)
  for block in plain_params["transformer"].values():
    block.pop("cross_attn", None)
    block.pop("ln_cross", None)
  plain = TextTransformer(**KW, causal=False, pool="mean")
  _, pooled = grounded.apply({"params": params}, TOKENS)
  _, expected = plain.apply({"params": plain_params}, TOKENS)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)
  _, grounded_pooled = grounded.apply({"params": params}, TOKENS, _context())
  assert not np.allclose(pooled, grounded_pooled, atol=1e-4)
  with pytest.raises(ValueError, match="decoder=True needs a TextTransformer built with"):
    jax.eval_shape(lambda: plain.apply({"params": plain_params}, TOKENS, decoder=True))
  with pytest.raises(ValueError, match="decode=True TextTransformer needs causal"):
    jax.eval_shape(lambda: TextTransformer(**KW, causal=False, decode=True).init(
        jax.random.key(0), TOKENS))
