"""The model registry: a config builds the same module (and params) as the hand-written
constructor; unknown or duplicated keys fail naming them; dtype strings resolve in one place."""
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mmjax.models import MODELS, build_model, get_model_class, resolve_dtype
from mmjax.models.clip import CLIP
from mmjax.nn.autoencoder import KLAutoencoder
from mmjax.nn.text import TextTransformer
from mmjax.nn.vit import VisionTransformer

TEXT_FROM_DATA = dict(vocab_size=40, context_length=8, pad_id=0, eos_id=2)


def clip_config(**top):
  return dict(name="clip", embed_dim=16, dtype="float32", attention_impl="einsum", remat=False,
              logit_bias_init=-10.0, **top,
              image_encoder=dict(name="vision_transformer", stem_channels=[4], patch_size=4,
                                 width=16, num_layers=1, num_heads=2, mlp_ratio=2.0, pool="gap"),
              text_encoder=dict(name="text_transformer", width=16, num_layers=1, num_heads=2))


def hand_built_clip(dtype=jnp.float32):
  image = VisionTransformer(patch_size=4, width=16, num_layers=1, num_heads=2, mlp_ratio=2.0,
                            pool="gap", stem_channels=(4,), dtype=dtype)
  text = TextTransformer(vocab_size=40, context_length=8, width=16, num_layers=1, num_heads=2,
                         pad_id=0, eos_id=2, dtype=dtype)
  return CLIP(image, text, embed_dim=16, logit_bias_init=-10.0, dtype=dtype)


def _param_tree(model):
  """{path: (shape, dtype)} of `model`'s params (traced, not computed)."""
  images, tokens = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 8), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
  leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: hasattr(x, "value"))[0]
  return {jax.tree_util.keystr(path): (getattr(leaf, "value", leaf).shape,
                                       getattr(leaf, "value", leaf).dtype)
          for path, leaf in leaves}


def test_config_builds_the_hand_built_module_and_params():
  built = build_model(clip_config(), text_encoder=TEXT_FROM_DATA)
  reference = hand_built_clip()
  # Equal fields, towers included: the same init function, hence the same params for a key.
  assert built == reference
  tree = _param_tree(built)
  assert tree == _param_tree(reference)
  assert tree["['logit_bias']"] == ((), jnp.float32)
  assert tree["['image_encoder']['stem']['conv0']['kernel']"] == ((3, 3, 3, 4), jnp.float32)


def test_json_round_trip_builds_the_same_module():
  # config.json turns tuples into lists; a module's fields get tuples back.
  config = json.loads(json.dumps(clip_config()))
  assert build_model(config, text_encoder=TEXT_FROM_DATA) == hand_built_clip()
  autoencoder = build_model(dict(name="kl_autoencoder", channels=[4, 8], num_groups=4))
  assert autoencoder == KLAutoencoder(channels=(4, 8), num_groups=4)


def test_dtype_string_resolves_once_for_every_tower():
  built = build_model(clip_config() | {"dtype": "bfloat16"}, text_encoder=TEXT_FROM_DATA)
  assert built == hand_built_clip(jnp.bfloat16)
  (tokens, _), _ = jax.eval_shape(built.image_encoder.init_with_output, jax.random.key(0),
                                  jnp.zeros((1, 16, 16, 3)))
  assert tokens.dtype == jnp.bfloat16
  # A tower's own setting wins over the inherited one.
  config = clip_config() | {"dtype": "bfloat16"}
  config["text_encoder"] = config["text_encoder"] | {"dtype": "float32"}
  built = build_model(config, text_encoder=TEXT_FROM_DATA)
  assert (built.dtype, built.image_encoder.dtype, built.text_encoder.dtype) == (
      jnp.bfloat16, jnp.bfloat16, jnp.float32)
  assert resolve_dtype("float32") is jnp.float32 and resolve_dtype(jnp.bfloat16) is jnp.bfloat16
  with pytest.raises(ValueError, match=r"model.dtype must be one of \['bfloat16', 'float32'\], "
                     r"got 'float16'"):
    build_model(clip_config() | {"dtype": "float16"}, text_encoder=TEXT_FROM_DATA)


class Wrapper(nn.Module):
  """A third level above CLIP, for the precedence of shared settings."""
  inner: nn.Module
  dtype: Any = jnp.float32


def test_the_nearest_shared_setting_wins(monkeypatch):
  monkeypatch.setitem(MODELS, "wrapper", f"{__name__}:Wrapper")
  built = build_model(dict(name="wrapper", dtype="bfloat16", inner=clip_config()),
                      inner=dict(text_encoder=TEXT_FROM_DATA))
  # CLIP's float32 is nearer to its towers than the wrapper's bfloat16.
  assert built.dtype == jnp.bfloat16 and built.inner == hand_built_clip(jnp.float32)


def test_shared_settings_reach_the_towers_that_have_them():
  # CLIP has no remat / attention_impl field: they are for its towers.
  built = build_model(clip_config() | {"remat": True, "attention_impl": "dot_product"},
                      text_encoder=TEXT_FROM_DATA)
  assert built.image_encoder.remat and built.text_encoder.remat
  assert built.image_encoder.attention_impl == built.text_encoder.attention_impl == "dot_product"
  with pytest.raises(ValueError, match="shared setting model.remat reaches no module: "
                     "KLAutoencoder has no such field"):
    build_model(dict(name="kl_autoencoder", remat=True))


def test_unknown_key_names_it_and_the_valid_fields():
  config = clip_config()
  config["image_encoder"] = config["image_encoder"] | {"widht": 32}
  with pytest.raises(ValueError, match=r"unknown config key model.image_encoder.widht: "
                     r"VisionTransformer's fields are \[.*'patch_size'.*'width'\] \(plus 'name'\)"):
    build_model(config, text_encoder=TEXT_FROM_DATA)
  with pytest.raises(ValueError, match=r"unknown config key model.temperature: CLIP's fields"):
    build_model(clip_config(temperature=0.07), text_encoder=TEXT_FROM_DATA)
  with pytest.raises(ValueError, match=r"unknown model name 'clipp'; registered models are "
                     r"\['audio_spectrogram_transformer', 'audio_visual', 'blip', 'captioner', "
                     r"'clip'"):
    build_model(clip_config() | {"name": "clipp"})


def test_values_from_the_data_are_not_also_in_the_config():
  config = clip_config()
  config["text_encoder"] = config["text_encoder"] | {"vocab_size": 99}
  with pytest.raises(ValueError, match=r"model.text_encoder.vocab_size comes from the data or "
                     r"task \(40\); remove it from the config"):
    build_model(config, text_encoder=TEXT_FROM_DATA)
  with pytest.raises(ValueError, match=r"model.text_encoder \(TextTransformer\) needs "
                     r"\['context_length', 'vocab_size'\]"):
    build_model(clip_config())
  no_text = {k: v for k, v in clip_config().items() if k != "text_encoder"}
  with pytest.raises(ValueError, match="the task gave values for a sub-module "
                     "model.text_encoder, but the config has no model.text_encoder"):
    build_model(no_text, text_encoder=TEXT_FROM_DATA)


def test_unregistered_module_by_path():
  assert get_model_class("mmjax.nn.vit:VisionTransformer") is VisionTransformer
  built = build_model(dict(name="mmjax.nn.vit:VisionTransformer", patch_size=4, width=8,
                           num_layers=1, num_heads=2))
  assert built == VisionTransformer(patch_size=4, width=8, num_layers=1, num_heads=2)
